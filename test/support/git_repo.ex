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
  def tmp_dir! do
    dir = Path.join(System.tmp_dir!(), "sykli-test-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(dir) end)
    # Resolve symlinks (a /tmp that is a link) so paths compare equal to what git reports.
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
