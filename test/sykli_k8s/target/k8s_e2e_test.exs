defmodule SykliK8s.TargetE2ETest do
  # run_task end to end: the NIF, the tokio runtime and kube-rs against the real control
  # plane (kube-apiserver, the job controller, the garbage collector, virtual-kubelet nodes;
  # shared by the run, each test in its own namespace) and a real git server.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  alias SykliK8s.Target
  alias SykliK8s.Test.{Cluster, RealCluster}

  @moduletag timeout: 180_000

  setup do
    tmp = tmp_dir!()
    work = init!(Path.join(tmp, "work"))
    write!(work, "Cargo.toml", "[package]\nname = \"app\"\n")
    sha = commit_all!(work, "first")
    srv = Path.join(tmp, "srv")
    File.mkdir_p!(srv)
    git!(srv, ["clone", "-q", "--bare", work, "repo.git"])
    url = Cluster.git_server!(srv) <> "/repo.git"
    git!(work, ["remote", "add", "origin", url])
    git!(work, ["fetch", "-q", "origin"])
    git!(work, ["branch", "-q", "-u", "origin/main"])
    info = RealCluster.info()
    ns = RealCluster.namespace!("e2e")

    {:ok, state} =
      Target.setup(kubeconfig: info["kubeconfig"], namespace: ns, workdir: work, create_namespace: true)

    {:ok, info: info, state: state, sha: sha, ns: ns}
  end

  defp collect(tag_events), do: fn event -> send(self(), {:event, tag_events, event}) end

  test "the task finds the exact commit at /app; its log streams; the Job is deleted", %{
    state: state,
    sha: sha,
    info: info,
    ns: ns
  } do
    task = %{
      name: "build",
      container: "any",
      env: %{"EXPECTED" => sha},
      command: ~s|test -f Cargo.toml && test "$(git rev-parse HEAD)" = "$EXPECTED" && echo checked-ok|,
      mounts: [%{resource: "src:.", path: "/app", type: "directory"}]
    }

    resources = %{"src:." => %{type: "directory", path: "."}}
    assert :ok = Target.run_task(task, state, resources: resources, on_event: collect(:build))
    assert_received {:event, :build, {:log, "task", "checked-ok"}}
    assert_received {:event, :build, {:phase, :creating, _}}
    assert RealCluster.jobs(info, ns) == []
  end

  test "a failing command: its exit code in details, its log delivered", %{state: state} do
    task = %{name: "fail", container: "any", command: "echo boom; exit 3"}

    assert {:error, %SykliK8s.Error{kind: :task_failed, message: message, details: %{exit_code: 3, job: job}}} =
             Target.run_task(task, state, on_event: collect(:fail))

    assert message =~ "exit code 3"
    assert job =~ "sykli-fail-"
    assert_received {:event, :fail, {:log, "task", "boom"}}
  end

  test "an image that cannot be pulled fails fast with the image named", %{state: state} do
    task = %{name: "pull", container: "registry.invalid/app:1", command: "true"}

    assert {:error, %SykliK8s.Error{kind: :image_pull, message: message}} =
             Target.run_task(task, state, timeout: 600, on_event: fn _ -> :ok end)

    assert message =~ "registry.invalid/app:1"
  end

  test "cancelling a run deletes its Job", %{state: state, info: info, ns: ns} do
    {:ok, run} =
      Target.start_task(%{name: "long", container: "any", command: "echo started; sleep 600"}, state)

    tag = run.tag
    assert_receive {^tag, {:log, "task", "started"}}, 60_000
    assert [_] = RealCluster.jobs(info, ns)
    :ok = Target.cancel(run)
    assert {:error, %SykliK8s.Error{kind: :cancelled}} = Target.await(run)
    assert RealCluster.jobs(info, ns) == []
  end

  test "a run whose process dies is cancelled: its Job is deleted", %{state: state, info: info, ns: ns} do
    parent = self()

    owner =
      spawn(fn ->
        {:ok, run} =
          Target.start_task(%{name: "orphan", container: "any", command: "echo started; sleep 600"}, state)

        tag = run.tag

        receive do
          {^tag, {:log, "task", "started"}} -> send(parent, :running)
        after
          60_000 -> send(parent, :never_started)
        end

        receive do: (:never -> :ok)
      end)

    assert_receive :running, 60_000
    assert [_] = RealCluster.jobs(info, ns)
    Process.exit(owner, :kill)
    # Nothing sends an event for this: the handle's destructor deletes the Job.
    assert Cluster.eventually(fn -> RealCluster.jobs(info, ns) == [] end)
  end

  test "preflight errors create nothing", %{info: info} = ctx do
    absent = RealCluster.namespace!("absent")

    {:ok, state} = Target.setup(kubeconfig: info["kubeconfig"], namespace: absent, workdir: ctx.state.workdir)

    assert {:error, %SykliK8s.Error{kind: :not_found, message: message}} =
             Target.run_task(%{name: "t", container: "any", command: "true"}, state)

    assert message =~ ~s(namespace "#{absent}" does not exist)
    assert RealCluster.jobs(info, absent) == []
  end

  test "keep_failed keeps a failed Job for debugging", %{state: state, info: info, ns: ns} do
    assert {:error, %SykliK8s.Error{kind: :task_failed, details: %{kept: true, job: job}}} =
             Target.run_task(%{name: "keep", container: "any", command: "exit 1"}, state,
               keep_failed: true,
               on_event: fn _ -> :ok end
             )

    assert RealCluster.jobs(info, ns) == [job]
  end

  test "resolve_secret reads a Secret's key; create_volume makes a claim once", %{
    state: state,
    info: info,
    ns: ns
  } do
    # The namespace exists once a run has created it.
    :ok =
      Target.run_task(%{name: "warm", container: "any", command: "true"}, state, on_event: fn _ -> :ok end)

    RealCluster.api_post!(info, "/api/v1/namespaces/#{ns}/secrets", %{
      "apiVersion" => "v1",
      "kind" => "Secret",
      "metadata" => %{"name" => "gh"},
      "stringData" => %{"token" => "s3cr3t", "value" => "default-key"}
    })

    assert {:ok, "s3cr3t"} = Target.resolve_secret("gh/token", state)
    assert {:ok, "default-key"} = Target.resolve_secret("gh", state)
    assert {:error, :not_found} = Target.resolve_secret("gh/missing", state)
    assert {:error, :not_found} = Target.resolve_secret("nope", state)

    assert {:ok, %{reference: "cache", id: "cache"}} = Target.create_volume("cache", %{size: "2Gi"}, state)
    assert {:ok, _} = Target.create_volume("cache", %{size: "2Gi"}, state)
    pvc = RealCluster.api_get!(info, "/api/v1/namespaces/#{ns}/persistentvolumeclaims/cache")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]

    assert {:error, %SykliK8s.Error{kind: :invalid, message: message}} =
             Target.create_volume("big", %{size: "2gb"}, state)

    assert message =~ ~s(did you mean "2Gi")
  end
end
