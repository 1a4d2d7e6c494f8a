defmodule SykliK8s.Source do
  @moduledoc """
  Decides what source a Kubernetes run builds, before anything reaches the cluster.

  With the git-clone strategy the cluster fetches a commit from the remote, so:
  - `--git-ref REF` picks a branch, tag or commit of the remote (resolved with
    `git ls-remote`); local changes do not matter then;
  - otherwise HEAD is built: a dirty working tree is refused unless `allow_dirty` (then
    HEAD is built as committed, with a warning), and a HEAD the remote does not have is
    refused (the remote-tracking refs decide; when they cannot tell, the remote is asked).

  Every refusal lists the ways forward.
  """

  alias SykliK8s.{Error, Git}
  alias Sykli.GitContext

  @type prepared :: %{git_context: GitContext.t(), warnings: [String.t()], description: String.t()}

  @doc """
  The git context the Jobs will clone, plus warnings for the user. `opts`: `:strategy`
  (default `:git_clone`), `:allow_dirty`, `:git_ref`, `:unpushed` (`:refuse`, the default,
  or `:warn` for a dry run, which submits nothing).
  """
  @spec prepare(GitContext.t(), keyword()) :: {:ok, prepared()} | {:error, Error.t()}
  def prepare(%GitContext{} = ctx, opts \\ []) do
    case Keyword.get(opts, :strategy) || :git_clone do
      :git_clone ->
        git_clone(ctx, opts)

      strategy when strategy in [:pvc, :s3] ->
        upload(ctx, Keyword.put(opts, :strategy, strategy))

      other ->
        {:error,
         %Error{
           kind: :unsupported,
           message: "the #{other} source strategy is not supported by this build yet"
         }}
    end
  end

  # The working tree as it is goes to the cluster: uncommitted changes are the point, and no
  # remote is involved.
  defp upload(ctx, opts) do
    cond do
      Keyword.get(opts, :git_ref) ->
        {:error,
         %Error{
           kind: :invalid_option,
           message:
             "--git-ref names a commit of the remote; the #{Keyword.get(opts, :strategy)} strategy uploads the working tree: use one or the other"
         }}

      Keyword.get(opts, :source_sync) == :git ->
        warnings =
          if ctx.dirty,
            do: ["source_sync: :git uploads HEAD as committed; #{changes(ctx.changes.total)} not included"],
            else: []

        {:ok,
         %{
           git_context: %{ctx | dirty: false},
           warnings: warnings,
           description: "commit #{short(ctx.sha)} (HEAD as a git bundle)"
         }}

      true ->
        what = if ctx.dirty, do: "the working tree (#{changes(ctx.changes.total)})", else: "the working tree"
        {:ok, %{git_context: ctx, warnings: [], description: "#{what} at #{short(ctx.sha)}"}}
    end
  end

  defp git_clone(%GitContext{url: nil}, _opts) do
    {:error,
     %Error{
       kind: :no_remote,
       message:
         "the repository has no remote: a cluster clones from a git server " <>
           "(git remote add origin URL; git push -u origin HEAD)"
     }}
  end

  defp git_clone(ctx, opts) do
    case Keyword.get(opts, :git_ref) do
      nil -> head(ctx, opts)
      ref -> git_ref(ctx, ref)
    end
  end

  defp git_ref(ctx, ref) do
    with {:ok, resolved} <- Git.resolve_ref(ctx, ref) do
      label = resolved.ref_name || "commit"

      warnings =
        if ctx.dirty, do: ["building #{ref} from #{ctx.remote}: local changes are not part of it"], else: []

      {:ok,
       %{
         git_context: %{ctx | sha: resolved.sha, branch: resolved.branch, dirty: false},
         warnings: warnings,
         description: "commit #{short(resolved.sha)} (#{label})"
       }}
    end
  end

  defp head(ctx, opts) do
    allow_dirty = Keyword.get(opts, :allow_dirty, false)

    cond do
      ctx.dirty and not allow_dirty ->
        {:error,
         %Error{
           kind: :dirty_workdir,
           message:
             "the working tree has #{changes(ctx.changes.total)}; the cluster clones commit " <>
               "#{short(ctx.sha)} from #{ctx.remote}, without them:\n" <>
               changed_paths(ctx) <> ways_forward(ctx, :dirty),
           details: %{changes: ctx.changes}
         }}

      true ->
        warnings =
          if ctx.dirty,
            do: [
              "--allow-dirty: building HEAD #{short(ctx.sha)} as committed; " <>
                "#{changes(ctx.changes.total)} #{if ctx.changes.total == 1, do: "is", else: "are"} not included"
            ],
            else: []

        with {:ok, more} <- pushed(ctx, Keyword.get(opts, :unpushed, :refuse)) do
          {:ok,
           %{
             git_context: %{ctx | dirty: false},
             warnings: warnings ++ more,
             description: "commit #{short(ctx.sha)} (#{ctx.branch || "detached HEAD"})"
           }}
        end
    end
  end

  defp pushed(%{pushed: true}, _), do: {:ok, []}

  defp pushed(%{pushed: false} = ctx, :warn),
    do:
      {:ok,
       ["HEAD #{short(ctx.sha)} is on no remote-tracking branch: a cluster cannot fetch it until you push it"]}

  defp pushed(%{pushed: false} = ctx, :refuse), do: not_pushed(ctx, "no remote-tracking branch contains it")

  defp pushed(%{pushed: :unknown} = ctx, mode) do
    case Git.confirm_pushed(ctx) do
      {:ok, _ref} ->
        {:ok, []}

      {:error, %Error{kind: :not_pushed}} when mode == :warn ->
        pushed(%{ctx | pushed: false}, :warn)

      {:error, %Error{kind: :not_pushed}} ->
        not_pushed(ctx, "the remote has no branch or tag that contains it")

      {:error, _} = error ->
        error
    end
  end

  defp not_pushed(ctx, why) do
    {:error,
     %Error{
       kind: :not_pushed,
       message:
         "HEAD #{short(ctx.sha)} is not on #{ctx.remote} (#{why}): the cluster clones from the remote, " <>
           "so it cannot fetch this commit.\n" <> ways_forward(ctx, :unpushed)
     }}
  end

  defp ways_forward(ctx, why) do
    push =
      case why do
        :dirty ->
          "commit and push your changes (git add, git commit, git push), then run again"

        :unpushed ->
          "push it (git push #{ctx.remote} HEAD#{if ctx.branch, do: ":" <> ctx.branch}), then run again"
      end

    others =
      case why do
        :dirty -> ["--allow-dirty builds HEAD #{short(ctx.sha)} as committed, without your changes"]
        :unpushed -> ["--git-ref REF builds a branch, tag or commit the remote has"]
      end

    lines =
      [push | others] ++
        [
          "--source-strategy=pvc uploads the working tree as it is into a claim (source_pvc)",
          "--source-strategy=s3 uploads it as an archive to a bucket (s3: [bucket: ...])"
        ]

    "ways forward:\n" <> Enum.map_join(lines, "\n", &("  - " <> &1))
  end

  defp changed_paths(%{changes: c}) do
    shown = Enum.map(Enum.take(c.paths, 10), &"  #{String.pad_trailing(&1.status, 2)} #{&1.path}\n")
    more = if c.total > length(shown), do: ["  … and #{c.total - length(shown)} more\n"], else: []
    Enum.join(shown ++ more)
  end

  defp changes(1), do: "1 uncommitted change"
  defp changes(n), do: "#{n} uncommitted changes"

  defp short(sha), do: String.slice(sha, 0, 12)
end
