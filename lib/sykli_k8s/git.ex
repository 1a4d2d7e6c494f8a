defmodule SykliK8s.Git do
  @moduledoc """
  Git detection with everything a Kubernetes run needs to decide what to build: the
  `Sykli.GitContext` struct with the remote, CI branch variables, counted changes, whether
  HEAD is pushed, submodules, LFS, shallow clones and worktrees; ref resolution against the
  remote; URL parsing that keeps scheme, user and port. Errors are `%SykliK8s.Error{kind: atom}`.

  `Sykli.GitContext` keeps sykli's own, simpler contract on top of these.

  Detection runs in Rust (git2) on a dirty I/O scheduler; the status part is spread over
  every core and is faster than `git status` itself (see BENCHMARKS.md).
  """

  alias Sykli.GitContext

  @ci_branch_vars ~w(GITHUB_HEAD_REF GITHUB_REF_NAME CI_COMMIT_REF_NAME BUILDKITE_BRANCH GIT_BRANCH)

  @doc "The CI variables consulted, in order, for the branch of a detached HEAD."
  def ci_branch_vars, do: @ci_branch_vars

  @doc """
  Detects the git context of the repository containing `path` (any subdirectory, linked
  worktree or `.git` file works).

  Options:
    * `:env` — the CI variables to consult for a detached HEAD (default: this process's
      environment);
    * `:max_paths` — how many changed paths to return (default 10; the counts are always
      complete).
  """
  @spec detect(Path.t(), keyword()) :: {:ok, GitContext.t()} | {:error, SykliK8s.Error.t()}
  def detect(path \\ ".", opts \\ []) do
    path = path |> chardata!("path") |> Path.expand()
    env = Keyword.get_lazy(opts, :env, fn -> System.get_env() end) |> Map.new()
    ci_env = Map.take(env, @ci_branch_vars)
    max_paths = Keyword.get(opts, :max_paths, 10)

    unless is_integer(max_paths) and max_paths >= 0 do
      raise ArgumentError, ":max_paths must be a non-negative integer, got: #{inspect(max_paths)}"
    end

    SykliK8s.Error.wrap(SykliK8s.Native.git_detect(path, ci_env, max_paths))
  end

  @doc "Like `detect/2`, but raises `SykliK8s.Error`."
  @spec detect!(Path.t(), keyword()) :: GitContext.t()
  def detect!(path \\ ".", opts \\ []) do
    case detect(path, opts) do
      {:ok, ctx} -> ctx
      {:error, error} -> raise error
    end
  end

  @doc """
  Resolves `ref` (a branch, tag, full ref name or commit) against the context's remote with
  `git ls-remote` (the user's own credentials: ssh-agent, credential helpers). Returns
  `%{sha, ref_name, branch}`; a ref the remote does not have is `kind: :unknown_ref`, a
  commit no remote branch or tag contains is `kind: :not_pushed`.
  """
  @spec resolve_ref(GitContext.t(), String.t()) :: {:ok, map()} | {:error, SykliK8s.Error.t()}
  def resolve_ref(%GitContext{} = ctx, ref) do
    with {:ok, remote} <- remote(ctx),
         {:ok, {listed, listing}} <- ls_remote(ctx.root, remote) do
      SykliK8s.Error.wrap(
        SykliK8s.Native.git_resolve_ref(ctx.root, remote, listed, listing, chardata!(ref, "ref"))
      )
    end
  end

  @doc """
  Asks the remote itself whether the context's commit can be fetched (for when the
  remote-tracking refs cannot tell, as in a shallow CI clone): `{:ok, ref_name}` of a remote
  ref that contains it, else `kind: :not_pushed`.
  """
  @spec confirm_pushed(GitContext.t()) :: {:ok, String.t()} | {:error, SykliK8s.Error.t()}
  def confirm_pushed(%GitContext{} = ctx) do
    with {:ok, remote} <- remote(ctx),
         {:ok, {listed, listing}} <- ls_remote(ctx.root, remote) do
      SykliK8s.Error.wrap(SykliK8s.Native.git_confirm_pushed(ctx.root, remote, listed, listing, ctx.sha))
    end
  end

  @ls_remote_timeout 60_000

  # The user's own git, so their ssh-agent, credential helpers and insteadOf rules apply; it
  # never prompts and is killed when the remote does not answer in time.
  defp ls_remote(root, remote) do
    case System.find_executable("git") do
      nil ->
        {:error,
         %SykliK8s.Error{
           kind: :git,
           message: "git is not installed: it is needed to ask the remote what it has"
         }}

      git ->
        ls_remote(git, root, remote)
    end
  end

  defp ls_remote(git, root, remote) do
    port =
      Port.open({:spawn_executable, git}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["-C", root, "ls-remote", "--quiet", "--", remote],
        env: [
          {~c"GIT_TERMINAL_PROMPT", ~c"0"},
          {~c"GCM_INTERACTIVE", ~c"never"},
          {~c"GIT_ASKPASS", false},
          {~c"SSH_ASKPASS", false}
        ]
      ])

    deadline = System.monotonic_time(:millisecond) + @ls_remote_timeout
    collect_ls_remote(port, [], deadline, remote)
  end

  defp collect_ls_remote(port, acc, deadline, remote) do
    receive do
      {^port, {:data, data}} -> collect_ls_remote(port, [acc | data], deadline, remote)
      {^port, {:exit_status, status}} -> {:ok, {status == 0, IO.iodata_to_binary(acc)}}
    after
      max(deadline - System.monotonic_time(:millisecond), 0) ->
        with {:os_pid, pid} <- Port.info(port, :os_pid), do: System.cmd("kill", ["-KILL", to_string(pid)])
        Port.close(port)

        {:error,
         %SykliK8s.Error{
           kind: :remote_unreachable,
           message:
             "git ls-remote #{remote} did not answer within #{div(@ls_remote_timeout, 1000)}s: " <>
               "check the network and your credentials (git ls-remote #{remote})"
         }}
    end
  end

  defp remote(%{remote: nil}),
    do:
      {:error,
       %SykliK8s.Error{kind: :no_remote, message: "the repository has no remote (git remote add origin URL)"}}

  defp remote(%{remote: remote}), do: {:ok, remote}

  @doc """
  Parses a remote URL: `https://`, `http://`, `ssh://[user@]host[:port]/path`, scp-like
  `git@host:path` and `git://`, nested groups included. Credentials are never returned.
  `file://` URLs and local paths give `{:error, %SykliK8s.Error{kind: :local_remote}}`: a
  cluster cannot clone them.
  """
  @spec parse_remote_url(String.t()) ::
          {:ok,
           %{
             scheme: String.t(),
             user: String.t() | nil,
             host: String.t(),
             port: :inet.port_number() | nil,
             path: String.t(),
             owner: String.t(),
             repo: String.t(),
             https_url: String.t()
           }}
          | {:error, SykliK8s.Error.t()}
  def parse_remote_url(url) do
    SykliK8s.Error.wrap(SykliK8s.Native.git_parse_remote_url(chardata!(url, "url")))
  end

  @doc """
  The HTTPS URL of the same repository (`git@github.com:org/repo.git` →
  `https://github.com/org/repo.git`), or nil when `url` is not a remote URL.
  """
  @spec to_https_url(String.t()) :: String.t() | nil
  def to_https_url(url) do
    case parse_remote_url(url) do
      {:ok, %{https_url: https}} -> https
      {:error, _} -> nil
    end
  end

  defp chardata!(value, what) do
    IO.chardata_to_string(value)
  rescue
    _ -> raise ArgumentError, "#{what} must be a string, got: #{inspect(value)}"
  end
end
