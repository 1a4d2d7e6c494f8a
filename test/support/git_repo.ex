defmodule SykliK8s.Test.GitRepo do
  @moduledoc "Real git repositories for tests, made with the git command line."

  import ExUnit.Assertions

  @isolated [
    {"GIT_CONFIG_NOSYSTEM", "1"},
    {"GIT_CONFIG_GLOBAL", "/dev/null"},
    {"GIT_AUTHOR_NAME", "Test"},
    {"GIT_AUTHOR_EMAIL", "test@example.com"},
    {"GIT_COMMITTER_NAME", "Test"},
    {"GIT_COMMITTER_EMAIL", "test@example.com"},
    {"GIT_TERMINAL_PROMPT", "0"}
  ]

  @doc """
  A fresh directory outside any repository (ExUnit's `@tag :tmp_dir` would put it inside
  this project's own checkout), removed when the test exits.
  """
  def tmp_dir!(prefix \\ "sykli-test") do
    dir = new_dir!(prefix)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  @doc """
  A directory that did not exist before, named `prefix-<random>` under the system's temp
  dir, its symlinks resolved (a /tmp that is a link) so paths compare equal to what git
  reports. Random, not `System.unique_integer/1`: that restarts with each VM, and a
  directory a killed earlier run left behind (a cluster's CA, a repository) must never be
  taken for this run's.
  """
  def new_dir!(prefix) do
    name = "#{prefix}-#{Base.encode32(:crypto.strong_rand_bytes(5), case: :lower)}"
    dir = Path.join(System.tmp_dir!(), name)
    :ok = File.mkdir(dir)
    {real, 0} = System.cmd("realpath", [dir])
    String.trim(real)
  end

  def git!(dir, args) do
    {out, status} =
      System.cmd("git", ["-c", "init.defaultBranch=main", "-c", "protocol.file.allow=always" | args],
        cd: dir,
        env: @isolated,
        stderr_to_stdout: true
      )

    assert status == 0, "git #{Enum.join(args, " ")} in #{dir}: #{out}"
    String.trim_trailing(out)
  end

  def init!(dir) do
    File.mkdir_p!(dir)
    git!(dir, ["init", "-q"])
    dir
  end

  def write!(dir, path, content) do
    file = Path.join(dir, path)
    File.mkdir_p!(Path.dirname(file))
    File.write!(file, content)
  end

  def commit_all!(dir, message \\ "commit") do
    git!(dir, ["add", "-A"])
    git!(dir, ["commit", "-q", "--allow-empty", "-m", message])
    head!(dir)
  end

  def head!(dir), do: git!(dir, ["rev-parse", "HEAD"])

  @doc "A repository with one commit pushed to a bare `origin`; returns {work, bare}."
  def with_origin!(base) do
    bare = Path.join(base, "origin.git")
    git!(base, ["init", "-q", "--bare", bare])
    work = init!(Path.join(base, "work"))
    write!(work, "README.md", "hello\n")
    commit_all!(work, "first")
    git!(work, ["remote", "add", "origin", bare])
    git!(work, ["push", "-q", "-u", "origin", "main"])
    {work, bare}
  end
end
