defmodule SykliK8s.TargetTest do
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  alias SykliK8s.Target

  # Every manifest these tests build is validated strictly against the Kubernetes schema.
  defp build!(task, name, state, opts) do
    {:ok, job} = Target.build_job_manifest(task, name, state, opts)
    file = Path.join(tmp_dir!(), "job.json")
    File.write!(file, SykliK8s.JSON.encode!(job))
    SykliK8s.Test.Tools.kube_validate!(file, 1)
    job
  end

  setup do
    tmp = tmp_dir!()
    {work, _} = with_origin!(tmp)
    git!(work, ["remote", "set-url", "origin", "https://git.example.com/acme/shop.git"])
    {:ok, ctx} = SykliK8s.Git.detect(work, env: %{})
    {:ok, state} = Target.setup(namespace: "ci", git_context: ctx, dry_run: true)
    {:ok, work: work, ctx: ctx, state: state}
  end

  # A task as sykli models it: atom keys.
  @task %{
    name: "build",
    command: "cargo build",
    container: "rust:1.75",
    mounts: [
      %{resource: "src:.", path: "/app", type: "directory"},
      %{resource: "fe", path: "/fe", type: "directory"}
    ]
  }
  @resources %{"src:." => %{type: "directory", path: "."}, "fe" => %{type: "directory", path: "frontend"}}

  test "the task container finds the exact commit at its mount paths", %{ctx: ctx, state: state} do
    job = build!(@task, "sykli-build-abc", state, resources: @resources, run_id: "abc")

    assert %{"apiVersion" => "batch/v1", "kind" => "Job", "metadata" => meta, "spec" => spec} = job
    assert meta["name"] == "sykli-build-abc"
    assert meta["namespace"] == "ci"
    assert meta["annotations"]["sykli.io/git-sha"] == ctx.sha
    assert meta["annotations"]["sykli.io/git-url"] == "https://git.example.com/acme/shop.git"
    assert meta["labels"]["sykli.io/run"] == "abc"

    pod = spec["template"]["spec"]
    [task] = pod["containers"]

    assert task["volumeMounts"] == [
             %{"name" => "sykli-workspace", "mountPath" => "/app"},
             %{"name" => "sykli-workspace", "mountPath" => "/fe", "subPath" => "frontend"}
           ]

    [clone] = pod["initContainers"]
    env = Map.new(clone["env"], &{&1["name"], &1["value"]})
    assert env["SYKLI_GIT_SHA"] == ctx.sha
    assert env["SYKLI_GIT_REF"] == "main"
    assert %{"name" => "sykli-workspace", "mountPath" => "/workspace"} in clone["volumeMounts"]

    # No directory mount is an empty directory: each is a volume the clone fills.
    filled = for c <- pod["initContainers"], m <- c["volumeMounts"], into: MapSet.new(), do: m["name"]
    assert Enum.all?(task["volumeMounts"], &(&1["name"] in filled))
  end

  test "state options reach the clone", %{ctx: ctx} do
    {:ok, state} =
      Target.setup(
        git_context: ctx,
        dry_run: true,
        clone_depth: :full,
        git_image: "registry.local/git:2@sha256:" <> String.duplicate("a", 64)
      )

    job = build!(@task, "j", state, resources: @resources)
    [clone] = job["spec"]["template"]["spec"]["initContainers"]
    assert clone["image"] =~ "registry.local/git:2@sha256:"
    assert %{"name" => "SYKLI_GIT_DEPTH", "value" => "full"} in clone["env"]
  end

  test "a dirty working tree is refused unless allowed", %{work: work} do
    write!(work, "README.md", "changed\n")
    write!(work, "new.txt", "n\n")
    {:ok, ctx} = SykliK8s.Git.detect(work, env: %{})
    {:ok, state} = Target.setup(git_context: ctx, dry_run: true)

    assert {:error, %SykliK8s.Error{kind: :dirty_workdir, message: message}} =
             Target.build_job_manifest(@task, "j", state, resources: @resources)

    assert message =~ "2 changes: M README.md, ?? new.txt"
    assert message =~ "--allow-dirty"
    assert %{"kind" => "Job"} = build!(@task, "j", state, resources: @resources, allow_dirty: true)
  end

  test "detects the git context from the state's workdir when none is given", %{work: work, ctx: ctx} do
    {:ok, state} = Target.setup(workdir: Path.join(work, "."), dry_run: true)
    job = build!(@task, "j", state, resources: @resources)
    assert job["metadata"]["annotations"]["sykli.io/git-sha"] == ctx.sha
  end

  test "bad tasks and options are clear errors", %{state: state} do
    task = %{@task | command: nil} |> Map.put(:k8s, %{memory: "32gb"})

    assert {:error, %SykliK8s.Error{kind: :invalid_task, message: message}} =
             Target.build_job_manifest(task, "j", state, resources: @resources)

    assert message =~ ~s(task "build": no command)
    assert message =~ ~s(did you mean "32Gi"?)

    assert {:error, %SykliK8s.Error{kind: :invalid_task, message: message}} =
             Target.build_job_manifest(@task, "Not_A_Name", state, resources: @resources)

    assert message =~ "not a DNS-1123 label"

    assert {:error, %SykliK8s.Error{kind: :invalid_pipeline, message: message}} =
             Target.build_job_manifest(Map.put(@task, :k8s, %{gpus: 1}), "j", state, resources: @resources)

    assert message =~ "unknown field `gpus`"
  end

  test "job names" do
    assert Target.job_name("Build & Test", "x1y2") == "sykli-build-test--cc1ca47d20-x1y2"
    name = Target.job_name(String.duplicate("long-task-name-", 10), "x1y2")
    assert String.length(name) <= 63
    assert name =~ ~r/\Asykli-[a-z0-9-]+-x1y2\z/
    assert Target.run_id() =~ ~r/\A[a-z0-9]{6}\z/
  end
end
