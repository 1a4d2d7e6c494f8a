defmodule Sykli.GitContext do
  @moduledoc """
  The git context of a run, with sykli's own contract: `detect/1` answers the context
  bare (a struct, which sykli reads as a map: `url`, `branch`, `sha`, `dirty`) or
  `{:error, :not_a_git_repo}`; `parse_remote_url/1` and `to_https_url/1` answer as sykli's
  callers expect.

  The struct carries more than sykli reads (the repository root, counted changes, whether
  HEAD is pushed, submodules, LFS…): the Kubernetes target uses it. The richer functions
  (options, error kinds, ref resolution) are `SykliK8s.Git`'s.
  """

  defstruct [
    :root,
    :remote,
    :url,
    :branch,
    :branch_source,
    :sha,
    dirty: false,
    changes: %{total: 0, staged: 0, modified: 0, deleted: 0, untracked: 0, conflicted: 0, paths: []},
    pushed: :unknown,
    submodules: [],
    lfs: false,
    shallow: false,
    worktree: false,
    warnings: []
  ]

  @typedoc "A changed path with its two-letter `git status --porcelain` code (`\" M\"`, `\"??\"`…)."
  @type changed_path :: %{path: String.t(), status: String.t()}

  @type t :: %__MODULE__{
          root: String.t(),
          remote: String.t() | nil,
          url: String.t() | nil,
          branch: String.t() | nil,
          branch_source: String.t() | nil,
          sha: String.t(),
          dirty: boolean(),
          changes: %{
            total: non_neg_integer(),
            staged: non_neg_integer(),
            modified: non_neg_integer(),
            deleted: non_neg_integer(),
            untracked: non_neg_integer(),
            conflicted: non_neg_integer(),
            paths: [changed_path()]
          },
          pushed: true | false | :unknown,
          submodules: [String.t()],
          lfs: boolean(),
          shallow: boolean(),
          worktree: boolean(),
          warnings: [String.t()]
        }

  @doc """
  The git context of the repository containing `path` (a subdirectory, linked worktree or
  `.git` file works), or `{:error, :not_a_git_repo}` when there is none or it has no commit.
  """
  @spec detect(Path.t()) :: t() | {:error, :not_a_git_repo}
  def detect(path \\ ".") do
    case SykliK8s.Git.detect(path) do
      {:ok, ctx} -> ctx
      {:error, _} -> {:error, :not_a_git_repo}
    end
  end

  @doc """
  Parses a remote URL: `{:ok, %{protocol: :https | :ssh, host, owner, repo}}` (plus
  `scheme`, `user`, `port`, `path`, `https_url`; never credentials), or
  `{:error, :invalid_url}`. `http(s)://` is `:https`; `ssh://` and `git@host:path` are
  `:ssh`; `repo` is the last path segment without `.git` and `owner` the rest
  (`group/subgroup`). Local paths, `file://` and `git://` are `:invalid_url`.
  """
  @spec parse_remote_url(String.t()) ::
          {:ok, %{protocol: :https | :ssh, host: String.t(), owner: String.t(), repo: String.t()}}
          | {:error, :invalid_url}
  def parse_remote_url(url) when is_binary(url) do
    case SykliK8s.Git.parse_remote_url(url) do
      {:ok, %{scheme: scheme} = parsed} when scheme in ["https", "http"] ->
        {:ok, Map.put(parsed, :protocol, :https)}

      {:ok, %{scheme: "ssh"} = parsed} ->
        {:ok, Map.put(parsed, :protocol, :ssh)}

      _ ->
        {:error, :invalid_url}
    end
  end

  def parse_remote_url(_url), do: {:error, :invalid_url}

  @doc """
  The HTTPS URL of the same repository: an `https://` URL unchanged, an ssh one as
  `https://host/owner/repo.git`; `{:error, :invalid_url}` for anything else.
  """
  @spec to_https_url(String.t()) :: {:ok, String.t()} | {:error, :invalid_url}
  def to_https_url(url) do
    case parse_remote_url(url) do
      {:ok, %{scheme: "https"}} ->
        {:ok, url}

      {:ok, %{protocol: :ssh, host: host, owner: owner, repo: repo}} ->
        {:ok, "https://#{host}/#{owner}/#{repo}.git"}

      {:ok, %{https_url: https}} ->
        {:ok, https}

      {:error, _} = error ->
        error
    end
  end
end
