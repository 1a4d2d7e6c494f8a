defmodule SykliK8s.CLITest do
  # Runs bin/sykli as a user would: a real process started in the user's repository.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo

  @sykli Path.expand("../../bin/sykli", __DIR__)

  setup do
    {:ok, tmp: tmp_dir!()}
  end

  defp sykli(args, opts) do
    # The CI variables of the machine running the tests are unset: only a test's own count.
    unset = Map.new([{"SYKLI_CWD", nil} | Enum.map(SykliK8s.Git.ci_branch_vars(), &{&1, nil})])
    env = unset |> Map.merge(Map.new(Keyword.get(opts, :env, []))) |> Enum.to_list()
    System.cmd(@sykli, args, cd: Keyword.fetch!(opts, :cd), env: env)
  end

  test "info on a clean, pushed repository", %{tmp: tmp} do
    {work, _} = with_origin!(tmp)
    git!(work, ["remote", "set-url", "origin", "git@github.com:org/repo.git"])
    sha = head!(work)
    {out, 0} = sykli(["info"], cd: work)

    assert out =~
             ~r/\A#{Regex.escape(expected_info(work, sha))}Kubernetes  source_strategy +:git_clone \(default\)\n/
  end

  defp expected_info(work, sha) do
    """
    Repository  #{work}
    Git URL     git@github.com:org/repo.git (remote origin)
    Branch      main
    SHA         #{sha}
    Status      clean
    Pushed      yes
    Submodules  none
    LFS         no
    Shallow     no
    """
  end

  test "info shows the Kubernetes settings and where each comes from", %{tmp: tmp} do
    {work, _} = with_origin!(tmp)

    write!(
      work,
      ".sykli/config.exs",
      "import Config\nconfig :sykli, :k8s, namespace: \"team-ci\", clone_depth: :full\n"
    )

    commit_all!(work, "config")
    git!(work, ["push", "-q"])
    {out, 0} = sykli(["info"], cd: work)
    assert out =~ ~r/^            namespace +team-ci \(\.sykli\/config\.exs\)$/m
    assert out =~ ~r/^            clone_depth +:full \(\.sykli\/config\.exs\)$/m
    assert out =~ ~r/^            context +the kubeconfig's current context \(default\)$/m

    {json, 0} = sykli(["info", "--json"], cd: work, env: [{"SYKLI_K8S_NAMESPACE", "from-env"}])

    assert %{
             "namespace" => %{"value" => "team-ci", "source" => ".sykli/config.exs"},
             "git_image" => %{"source" => "default"}
           } = SykliK8s.JSON.decode!(json)["k8s"]

    File.rm!(Path.join(work, ".sykli/config.exs"))
    {json, 0} = sykli(["info", "--json"], cd: work, env: [{"SYKLI_K8S_NAMESPACE", "from-env"}])

    assert %{"value" => "from-env", "source" => "SYKLI_K8S_NAMESPACE"} =
             SykliK8s.JSON.decode!(json)["k8s"]["namespace"]
  end

  test "info fails on a broken config file, naming the key and the file", %{tmp: tmp} do
    {work, _} = with_origin!(tmp)
    write!(work, ".sykli/config.exs", "import Config\nconfig :sykli, :k8s, clone_dept: 1\n")
    {out, 1} = System.cmd(@sykli, ["info"], cd: work, stderr_to_stdout: true, env: [{"SYKLI_CWD", nil}])

    assert out =~
             "sykli: #{work}/.sykli/config.exs: unknown key :clone_dept in config :sykli, :k8s (did you mean :clone_depth?)"
  end

  test "info from a subdirectory of a dirty repository lists the first paths", %{tmp: tmp} do
    {work, _} = with_origin!(tmp)
    write!(work, "README.md", "changed\n")
    for i <- 1..12, do: write!(work, "src/u#{String.pad_leading("#{i}", 2, "0")}.txt", "u\n")
    git!(work, ["add", "src/u01.txt"])
    write!(work, "notes.txt", "n\n")

    {out, 0} = sykli(["info"], cd: Path.join(work, "src"))
    assert out =~ "Repository  #{work}\n"

    assert out =~
             "Status      14 changes (1 staged, 1 modified, 12 untracked)\n" <>
               "               M README.md\n" <>
               "              A  src/u01.txt\n" <>
               "              ?? notes.txt\n" <>
               "              ?? src/u02.txt\n"

    assert out =~ "              … and 4 more\n"
  end

  test "info --json parses and carries every field", %{tmp: tmp} do
    {work, _} = with_origin!(tmp)
    write!(work, "local.txt", "x\n")
    sha = commit_all!(work)
    git!(work, ["checkout", "-q", "--detach"])

    {out, 0} = sykli(["info", "--json"], cd: work, env: [{"GITHUB_HEAD_REF", "feature/login"}])
    json = SykliK8s.JSON.decode!(out)

    assert %{
             "root" => ^work,
             "sha" => ^sha,
             "branch" => "feature/login",
             "branch_source" => "GITHUB_HEAD_REF",
             "dirty" => false,
             "pushed" => false,
             "remote" => "origin",
             "submodules" => [],
             "lfs" => false,
             "shallow" => false,
             "worktree" => false,
             "changes" => %{"total" => 0, "paths" => []}
           } = json

    assert String.ends_with?(json["url"], "origin.git")
  end

  @pipeline ~s({"version": "2",
    "tasks": [
      {"name": "build", "command": "make", "container": "gcc:14",
       "mounts": [{"resource": "src:.", "path": "/app", "type": "directory"}]},
      {"name": "api-tests", "command": "make test", "container": "gcc:14",
       "mounts": [{"resource": "src:services/api", "path": "/app", "type": "directory"}]},
      {"name": "lint", "command": "true", "container": "alpine"}],
    "resources": {"src:.": {"type": "directory", "path": "."},
                  "src:services/api": {"type": "directory", "path": "services/api"}}})

  test "info shows what each Job of the pipeline fetches", %{tmp: tmp} do
    {work, _} = with_origin!(tmp)
    git!(work, ["remote", "set-url", "origin", "git@github.com:org/repo.git"])
    {out, 0} = sykli(["info"], cd: work)
    refute out =~ "Fetch", "no pipeline, nothing to show"

    write!(work, ".sykli/pipeline.json", @pipeline)
    {out, 0} = sykli(["info"], cd: work)

    assert out =~
             "\nFetch       build      full\n" <>
               "            api-tests  sparse: services/api\n" <>
               "            lint       nothing (no source mounted)\n"

    {json, 0} = sykli(["info", "--json"], cd: work)

    assert %{"jobs" => [%{"task" => "build", "fetch" => "full"}, %{"task" => "api-tests"} = api, _]} =
             SykliK8s.JSON.decode!(json)["fetch"]

    assert api["fetch"] == "sparse: services/api"
    assert api["job"] =~ ~r/^sykli-api-tests-/

    # The config's sparse directories combine with the mounts.
    write!(work, ".sykli/config.exs", ~s(import Config\nconfig :sykli, :k8s, sparse: ["services", "libs"]\n))
    {out, 0} = sykli(["info"], cd: work)

    assert out =~
             "\nFetch       build      sparse: libs, services\n            api-tests  sparse: services/api\n"

    # A mount outside them would be empty: said, as a run would refuse it.
    write!(work, ".sykli/config.exs", ~s(import Config\nconfig :sykli, :k8s, sparse: ["libs"]\n))
    {out, 0} = sykli(["info"], cd: work)

    assert out =~
             ~s|\nFetch       ✗ task "api-tests": the mount at "/app" (src:services/api = "services/api") is outside the directories the config's sparse key checks out (sparse: libs)|

    {out, 0} = sykli(["info", "--pipeline", Path.join(tmp, "missing.json")], cd: work)
    assert out =~ "\nFetch       ✗ cannot read the pipeline #{tmp}/missing.json"
  end

  test "-C points at another repository", %{tmp: tmp} do
    {work, _} = with_origin!(tmp)
    {out, 0} = sykli(["info", "-C", work], cd: tmp)
    assert out =~ "SHA         #{head!(work)}\n"
  end

  test "outside a git repository: exit 1 and one clear line", %{tmp: tmp} do
    {out, status} = System.cmd(@sykli, ["info"], cd: tmp, stderr_to_stdout: true, env: [{"SYKLI_CWD", nil}])
    assert status == 1
    assert [line] = out |> String.split("\n", trim: true) |> Enum.reject(&(&1 =~ ~r/^(Compiling|Generated)/))

    assert line ==
             "sykli: #{tmp} is not inside a git repository (run sykli from your repository, or pass its path)"
  end

  test "warnings go to stderr, not into --json", %{tmp: tmp} do
    dir = init!(Path.join(tmp, "r"))
    commit_all!(dir)
    {out, 0} = sykli(["info", "--json"], cd: dir)
    assert %{"url" => nil, "warnings" => ["no remote" <> _]} = SykliK8s.JSON.decode!(out)
  end

  test "usage errors exit 2", %{tmp: tmp} do
    assert {_, 2} = sykli(["frobnicate"], cd: tmp)
    assert {_, 2} = sykli(["info", "--bogus"], cd: tmp)
    assert {_, 2} = sykli([], cd: tmp)
    assert {help, 0} = sykli(["help"], cd: tmp)
    assert help =~ "usage: sykli"
  end
end
