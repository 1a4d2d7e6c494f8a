defmodule SykliK8s.CLIRunTest do
  # `sykli run --target=k8s --dry-run`, through the real bin/sykli.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  import SykliK8s.Test.Tools

  @sykli Path.expand("../../bin/sykli", __DIR__)

  @pipeline ~s({"version": "2",
    "tasks": [
      {"name": "build", "command": "cargo build", "container": "rust:1.75",
       "mounts": [{"resource": "src:.", "path": "/app", "type": "directory"}]},
      {"name": "web", "command": "npm test", "container": "node:20", "depends_on": ["build"],
       "mounts": [{"resource": "fe", "path": "/app", "type": "directory"}], "k8s": {"memory": "2Gi"}}],
    "resources": {"src:.": {"type": "directory", "path": "."}, "fe": {"type": "directory", "path": "frontend"}}})

  setup do
    tmp = tmp_dir!()
    {work, _} = with_origin!(tmp)
    git!(work, ["remote", "set-url", "origin", "git@github.com:acme/shop.git"])
    write!(work, ".sykli/pipeline.json", @pipeline)
    commit_all!(work, "pipeline")
    git!(work, ["update-ref", "refs/remotes/origin/main", "HEAD"])
    {:ok, tmp: tmp, work: work}
  end

  defp sykli(args, cd) do
    System.cmd(@sykli, args, cd: cd, env: [{"SYKLI_CWD", nil}, {"SYKLI_K8S_NAMESPACE", nil}])
  end

  defp sykli_err(args, cd) do
    System.cmd(@sykli, args, cd: cd, env: [{"SYKLI_CWD", nil}], stderr_to_stdout: true)
  end

  test "prints kubectl-ready YAML that validates strictly and matches -o json", %{tmp: tmp, work: work} do
    {yaml, 0} = sykli(~w(run --target=k8s --dry-run --run-id r1), work)
    {json, 0} = sykli(~w(run --target=k8s --dry-run --run-id r1 -o json), work)

    yaml_file = Path.join(tmp, "jobs.yaml")
    json_file = Path.join(tmp, "jobs.json")
    File.write!(yaml_file, yaml)
    File.write!(json_file, json)
    kube_validate!(yaml_file, 2)

    list = SykliK8s.JSON.decode!(json)
    assert %{"apiVersion" => "v1", "kind" => "List", "items" => [build, web]} = list
    assert parse_yaml!(yaml_file) == [build, web]

    sha = head!(work)
    assert build["metadata"]["name"] == "sykli-build-r1"
    assert web["metadata"]["name"] == "sykli-web-r1"
    assert build["metadata"]["namespace"] == "sykli"
    assert build["metadata"]["annotations"]["sykli.io/git-sha"] == sha
    [clone] = build["spec"]["template"]["spec"]["initContainers"]
    # No ssh credentials configured: the public https form of the remote is cloned.
    assert %{"name" => "SYKLI_GIT_URL", "value" => "https://github.com/acme/shop.git"} in clone["env"]
    [task] = web["spec"]["template"]["spec"]["containers"]

    assert task["volumeMounts"] == [
             %{"name" => "sykli-workspace", "mountPath" => "/app", "subPath" => "frontend"}
           ]

    assert task["resources"] == %{"requests" => %{"memory" => "2Gi"}, "limits" => %{"memory" => "2Gi"}}
  end

  test "--pipeline -, --namespace, and a subdirectory as cwd", %{tmp: tmp, work: work} do
    file = Path.join(tmp, "p.json")
    File.write!(file, @pipeline)
    script = ~s(cat "$1" | "$2" run --target=k8s --dry-run --pipeline - -n team-a -o json)
    File.mkdir_p!(Path.join(work, "frontend"))

    {out, 0} =
      System.cmd("sh", ["-c", script, "sh", file, @sykli],
        cd: Path.join(work, "frontend"),
        env: [{"SYKLI_CWD", nil}]
      )

    %{"items" => items} = SykliK8s.JSON.decode!(out)
    assert Enum.map(items, & &1["metadata"]["namespace"]) == ["team-a", "team-a"]
  end

  test "a dirty tree fails before anything is built, listing the changes", %{work: work} do
    write!(work, "src/main.rs", "fn main() {}\n")
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run), work)
    short = String.slice(head!(work), 0, 12)

    assert out =~
             "sykli: the working tree has 1 uncommitted change; the cluster clones commit #{short} from origin"

    assert out =~ "\n  ?? src/\n"
    assert out =~ "--allow-dirty builds HEAD #{short} as committed"
    refute out =~ "apiVersion"

    {out, 0} = sykli_err(~w(run --target=k8s --dry-run --allow-dirty), work)

    assert out =~
             "warning: --allow-dirty: building HEAD #{short} as committed; 1 uncommitted change is not included"

    assert out =~ "apiVersion"
  end

  test "pipeline errors are listed together", %{tmp: tmp, work: work} do
    bad = ~s({"tasks": [{"name": "a", "mounts": [{"resource": "nope", "path": "app"}]},
                        {"name": "b", "command": "x", "depends_on": ["zzz"]}],
              "resources": {"r": {"type": "directory", "path": "../up"}}})

    file = Path.join(tmp, "bad.json")
    File.write!(file, bad)
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run --pipeline #{file}), work)

    for part <- [
          ~s(resource "r": path "../up" contains ".."),
          ~s(task "a": no command),
          ~s(task "a": mount path "app" must be absolute),
          ~s(task "a": mount at "app" uses resource "nope", which the pipeline does not define),
          ~s(task "b" depends on "zzz")
        ] do
      assert out =~ part
    end

    File.write!(file, ~s({"tasks": [{"name": "a", "command": "x", "depends_on": ["b"]},
                                     {"name": "b", "command": "y", "depends_on": ["a"]}]}))
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run --pipeline #{file}), work)
    assert out =~ "tasks depend on each other in a cycle: a → b → a"

    File.write!(file, ~s({"tasks": [{"name": "a", "command": "x", "container": "c"},
                                     {"name": "a", "command": "", "container": "c"}]}))
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run --pipeline #{file}), work)
    assert out =~ ~s(task "a" is defined twice)
    assert out =~ ~s(task "a": the command is empty)

    File.write!(file, ~s({"tasks": [{"name": "a", "command": "x", "when": "branch == 'main'"},
                                     {"name": "b", "command": "y", "secrets": ["TOKEN"]}]}))
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run --pipeline #{file}), work)
    assert out =~ ~s(does not handle these yet)
    assert out =~ ~s(task "a": when, task "b": secrets)

    File.write!(file, "{not json")
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run --pipeline #{file}), work)
    assert out =~ "sykli: the pipeline is not valid JSON: "

    File.write!(file, "[]")
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run --pipeline #{file}), work)
    assert out =~ "sykli: the pipeline must be a JSON object"
  end

  test "a missing pipeline file says how to give one", %{work: work} do
    File.rm!(Path.join(work, ".sykli/pipeline.json"))
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run --allow-dirty), work)
    assert out =~ "cannot read the pipeline #{work}/.sykli/pipeline.json: no such file or directory"
    assert out =~ "--pipeline -"
  end

  test "usage errors", %{work: work} do
    {out, 2} = sykli_err(~w(run --dry-run), work)
    assert out =~ "run needs --target=k8s"
    {_, 2} = sykli_err(~w(run --target=local --dry-run), work)
    {out, 2} = sykli_err(~w(run --target=k8s --dry-run -o xml), work)
    assert out =~ "--output must be yaml or json"
    {out, 2} = sykli_err(~w(run --target=k8s -o yaml), work)
    assert out =~ "--output prints the Jobs of a --dry-run"
    {out, 2} = sykli_err(~w(run --target=k8s --jobs 0), work)
    assert out =~ "--jobs must be 1 or more"
    {out, 2} = sykli_err(~w(run --target=k8s --source-strategy rsync), work)
    assert out =~ ~s(--source-strategy must be git_clone, pvc or s3, not "rsync")
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run -n Bad_NS), work)
    assert out =~ ~s(--namespace is "Bad_NS", but must be a namespace name)
  end

  test "a dry run warns about an unpushed HEAD (a real run refuses it: cli_k8s_test)", %{work: work} do
    write!(work, "local.txt", "not pushed\n")
    sha = commit_all!(work, "local only")
    {out, 0} = sykli_err(~w(run --target=k8s --dry-run), work)

    assert out =~
             "warning: HEAD #{String.slice(sha, 0, 12)} is on no remote-tracking branch: a cluster cannot fetch it until you push it"

    {out, 0} = System.cmd(@sykli, ~w(run --target=k8s --dry-run), cd: work, env: [{"SYKLI_CWD", nil}])
    refute out =~ "warning: HEAD", "warnings go to stderr; stdout stays kubectl-ready"
  end

  test "LFS follows the repository unless the config says otherwise; settings reach the clone by name", %{
    work: work
  } do
    clone_env = fn ->
      {out, 0} = sykli(~w(run --target=k8s --dry-run -o json), work)
      [build | _] = SykliK8s.JSON.decode!(out)["items"]
      [clone] = build["spec"]["template"]["spec"]["initContainers"]
      Map.new(clone["env"], &{&1["name"], &1["value"]})
    end

    refute Map.has_key?(clone_env.(), "SYKLI_GIT_LFS")
    write!(work, ".gitattributes", "*.bin filter=lfs diff=lfs merge=lfs -text\n")
    commit_all!(work, "lfs")
    git!(work, ["update-ref", "refs/remotes/origin/main", "HEAD"])
    assert clone_env.()["SYKLI_GIT_LFS"] == "1"

    write!(work, ".sykli/config.exs", """
    import Config
    config :sykli, :k8s, lfs: false, submodules: :recursive, git_token_secret: "tok", git_ca_bundle: "secret/corp-ca"
    """)

    commit_all!(work, "config")
    git!(work, ["update-ref", "refs/remotes/origin/main", "HEAD"])
    env = clone_env.()
    refute Map.has_key?(env, "SYKLI_GIT_LFS")
    assert env["SYKLI_GIT_SUBMODULES"] == "recursive"
    assert env["SYKLI_GIT_TOKEN"] == "1"
    assert env["GIT_SSL_CAINFO"] == "/sykli/git/ca/ca.crt"
  end

  test "each Job fetches what its task mounts, within the config's sparse directories", %{work: work} do
    jobs = fn ->
      {out, 0} = sykli(~w(run --target=k8s --dry-run -o json), work)

      for job <- SykliK8s.JSON.decode!(out)["items"] do
        [clone] = job["spec"]["template"]["spec"]["initContainers"]
        env = Map.new(clone["env"], &{&1["name"], &1["value"]})
        {job["metadata"]["annotations"]["sykli.io/fetch"], env["SYKLI_GIT_SPARSE"]}
      end
    end

    # build mounts the repository, web only frontend.
    assert jobs.() == [{"full", nil}, {"sparse: frontend", "frontend"}]
    {yaml, 0} = sykli(~w(run --target=k8s --dry-run), work)
    assert yaml =~ ~s(sykli.io/fetch: "sparse: frontend")

    write!(
      work,
      ".sykli/config.exs",
      ~s(import Config\nconfig :sykli, :k8s, sparse: ["frontend/src", "docs"]\n)
    )

    commit_all!(work, "sparse")
    git!(work, ["update-ref", "refs/remotes/origin/main", "HEAD"])

    assert jobs.() == [
             {"sparse: docs, frontend/src", "docs\nfrontend/src"},
             {"sparse: frontend/src", "frontend/src"}
           ]

    write!(work, ".sykli/config.exs", ~s(import Config\nconfig :sykli, :k8s, sparse: ["docs"]\n))
    commit_all!(work, "sparse elsewhere")
    git!(work, ["update-ref", "refs/remotes/origin/main", "HEAD"])
    {out, 1} = sykli_err(~w(run --target=k8s --dry-run), work)

    assert out =~
             ~s|task "web": the mount at "/app" (fe = "frontend") is outside the directories the config's sparse key checks out (sparse: docs)|

    refute out =~ "kind: "
  end
end
