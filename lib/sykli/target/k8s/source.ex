defmodule Sykli.Target.K8s.Source do
  @moduledoc """
  How the source reaches a task's Job. The strategies (`:git_clone`, the default; `:pvc`;
  `:s3`) are built in Rust as typed init containers with constant scripts (see
  `SykliK8s.Source` for what each builds and what it refuses); what sykli's callers use of
  this module stays: `strategy/1` and `validate_git_context/2`.
  """

  @doc "The source strategy of `opts` (`:source_strategy`), default `:git_clone`."
  @spec strategy(keyword() | map()) :: :git_clone | :pvc | :s3 | atom()
  def strategy(opts), do: opts[:source_strategy] || :git_clone

  @doc "`:ok`, or `{:error, :dirty_workdir}` for a dirty context unless `allow_dirty: true`."
  @spec validate_git_context(map(), keyword()) :: :ok | {:error, :dirty_workdir}
  def validate_git_context(ctx, opts \\ []) do
    if Map.get(ctx, :dirty) == true and opts[:allow_dirty] != true,
      do: {:error, :dirty_workdir},
      else: :ok
  end

  @doc "What a run builds from `ctx`: see `SykliK8s.Source.prepare/2`."
  defdelegate prepare(ctx, opts \\ []), to: SykliK8s.Source
end
