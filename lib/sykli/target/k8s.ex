defmodule Sykli.Target.K8s do
  @moduledoc """
  sykli's Kubernetes target: each task becomes a `batch/v1` Job whose task container finds
  the exact source at its mount paths.

  The Job is built in Rust as typed k8s-openapi objects (`build_job_manifest/4`). With the
  default **git-clone** source strategy an init container fetches exactly the commit of the
  git context into a workspace volume that the task container mounts at each directory
  mount's path (a sub-directory resource becomes a `subPath`).

  State (from `setup/1`): `:namespace` (default `SYKLI_K8S_NAMESPACE`, else `"sykli"`),
  `:git_context` (detected from `:workdir` when absent), `:source_strategy`
  (`:git_clone`), `:clone_depth` (1, any positive number, or `:full`), `:git_image`,
  `:clone_attempts`, `:clone_backoff`, `:default_image`, `:allow_dirty`,
  `:ttl_seconds_after_finished`.
  """

  alias Sykli.{Error, GitContext, JSON, Native}

  @doc "The target's name."
  def name, do: "k8s"

  @doc "Builds the target's state from options (nothing is contacted)."
  @spec setup(keyword()) :: {:ok, map()} | {:error, Error.t()}
  def setup(opts \\ []) do
    state =
      %{
        namespace: System.get_env("SYKLI_K8S_NAMESPACE") || "sykli",
        workdir: File.cwd!(),
        source_strategy: :git_clone,
        allow_dirty: false,
        artifact_pvc: "sykli-artifacts"
      }
      |> Map.merge(Map.new(opts))

    {:ok, state}
  end

  @doc """
  A Job name unique to the run: `sykli-<task>-<run id>`, a DNS-1123 label of at most 63
  characters however long the task name is.
  """
  @spec job_name(String.t(), String.t()) :: String.t()
  def job_name(task_name, run_id) when is_binary(task_name) and is_binary(run_id),
    do: Native.k8s_job_name(task_name, run_id)

  @doc "A short random run id (lower-case letters and digits)."
  @spec run_id() :: String.t()
  def run_id do
    for _ <- 1..6, into: "", do: <<Enum.random(~c"abcdefghijklmnopqrstuvwxyz0123456789")>>
  end

  @doc """
  The Job for `task` (a task as the pipeline JSON has it: string or atom keys), named
  `job_name`, as a map with string keys, exactly as it would be submitted.

  `opts`: `:resources` (the pipeline's resources, by id), `:run_id`, `:allow_dirty`.
  A dirty git context is refused (`kind: :dirty_workdir`) unless `allow_dirty: true`.
  """
  @spec build_job_manifest(map(), String.t(), map(), keyword()) :: {:ok, map()} | {:error, Error.t()}
  def build_job_manifest(task, job_name, state, opts \\ []) when is_map(task) and is_binary(job_name) do
    with {:ok, options} <- build_options(state, opts),
         {:ok, task_json} <- JSON.encode(task),
         {:ok, resources_json} <- JSON.encode(Keyword.get(opts, :resources, %{})),
         {:ok, options_json} <- JSON.encode(options),
         {:ok, job_json} <-
           Error.wrap(Native.k8s_build_job(task_json, resources_json, job_name, options_json)) do
      JSON.decode(job_json)
    end
  end

  @doc """
  Every Job of a pipeline (its JSON text), rendered as `:yaml` (multi-document) or `:json`
  (a `v1/List`), kubectl-ready. `opts` as for `build_job_manifest/4`.
  """
  @spec render_pipeline(String.t(), map(), :yaml | :json, keyword()) ::
          {:ok, String.t()} | {:error, Error.t()}
  def render_pipeline(pipeline_json, state, format, opts \\ []) when format in [:yaml, :json] do
    with {:ok, options} <- build_options(state, opts),
         {:ok, options_json} <- JSON.encode(options) do
      Error.wrap(Native.k8s_render_pipeline(pipeline_json, options_json, Atom.to_string(format)))
    end
  end

  defp build_options(state, opts) do
    with {:ok, ctx} <- git_context(state) do
      allow_dirty = Keyword.get(opts, :allow_dirty, Map.get(state, :allow_dirty, false))

      {:ok,
       compact(%{
         namespace: Map.get(state, :namespace, "sykli"),
         run_id: Keyword.get(opts, :run_id, Map.get(state, :run_id)),
         default_image: Map.get(state, :default_image),
         ttl_seconds_after_finished: Map.get(state, :ttl_seconds_after_finished),
         source: %{
           strategy: Map.get(state, :source_strategy, :git_clone),
           url: ctx.url,
           sha: ctx.sha,
           branch: ctx.branch,
           dirty: ctx.dirty,
           dirty_summary: dirty_summary(ctx),
           allow_dirty: allow_dirty,
           clone: %{
             depth: Map.get(state, :clone_depth) |> depth(),
             image: Map.get(state, :git_image),
             attempts: Map.get(state, :clone_attempts),
             backoff_seconds: Map.get(state, :clone_backoff)
           }
         }
       })}
    end
  end

  defp git_context(%{git_context: %GitContext{} = ctx}), do: {:ok, ctx}
  defp git_context(state), do: GitContext.detect(Map.get(state, :workdir, File.cwd!()))

  defp depth(:full), do: "full"
  defp depth(other), do: other

  @doc false
  def dirty_summary(%GitContext{dirty: false}), do: nil

  def dirty_summary(%GitContext{changes: c}) do
    shown = c.paths |> Enum.take(10) |> Enum.map_join(", ", &"#{String.trim(&1.status)} #{&1.path}")
    more = if c.total > 10, do: " and #{c.total - 10} more", else: ""
    "#{c.total} #{if c.total == 1, do: "change", else: "changes"}: #{shown}#{more}"
  end

  defp compact(map) when is_map(map) do
    for {k, v} <- map, v != nil, into: %{}, do: {k, compact(v)}
  end

  defp compact(other), do: other
end
