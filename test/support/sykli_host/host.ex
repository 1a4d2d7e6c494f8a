defmodule SykliK8s.Test.Host do
  @moduledoc """
  Plays sykli's own `sykli run --target=k8s` call path in the calling test process, from
  sykli 797c36a: `Sykli.CLI.run_sykli/1` (cli.ex:147-177: stdout discarded first, then
  `prepare_target_context`, 179-206), `do_run_sykli` (208-286: the `filter` and `timeout`
  keys), `Sykli.run/2` (sykli.ex:22-147: graph, matrix, filter, topological sort,
  `Executor.run(order, graph, Keyword.merge(opts, workdir: path))`),
  `Sykli.prepare_git_context_with_opts/2` and `validate_git_context/2` (sykli.ex:514-565),
  then `Sykli.Executor.run/3` (test/support/sykli_host/executor.ex). Sykli's SDK emission
  is replaced by the `pipeline:` option, a decoded pipeline map.

  `run/2` answers as `Sykli.run/2`: `{:ok, [%TaskResult{}]}`, `{:error, [%TaskResult{}]}` or
  `{:error, reason}`; a git-preparation error (where sykli's CLI prints
  `Formatter.format(Error.wrap(r))` and halts 1) is answered `{:error, Sykli.Error.wrap(r)}`.
  Shapes sykli would crash on crash here the same way (CaseClauseError for a `{:ok, ctx}`
  from detect or an odd `setup/1` answer), after stdout is restored.
  """

  alias Sykli.Error
  alias Sykli.Executor.TaskResult

  @doc """
  Runs the pipeline of `opts[:pipeline]` for the workdir `path` (as typed: `"."` stays `"."`).

  Options, as sykli's CLI parses them: `target:` (module, default `Sykli.Target.K8s`),
  `allow_dirty:`, `git_ssh_secret:`, `git_token_secret:`, `timeout:` (ms or `:infinity`),
  `filter:` (a task-name substring). Harness only: `pipeline:` (required),
  `max_parallel:` (limits the executor's chunks, never seen by `setup/1`, as sykli's CLI
  never forwards it) and `git_context_module:` (what `detect/1` is called on, default
  `Sykli.GitContext`).
  """
  def run(path, opts) do
    pipeline = Keyword.fetch!(opts, :pipeline)

    with_stdout_discarded(fn ->
      case prepare_target_context(path, opts) do
        {:ok, target_opts} -> sykli_run(path, cli_run_opts(opts) ++ target_opts, pipeline, opts)
        {:error, reason} -> {:error, Error.wrap(reason)}
      end
    end)
  end

  # cli.ex prepare_target_context, :k8s branch, with the target module substituted.
  defp prepare_target_context(path, opts) do
    git_opts = [
      allow_dirty: opts[:allow_dirty] || false,
      git_ssh_secret: opts[:git_ssh_secret],
      git_token_secret: opts[:git_token_secret]
    ]

    module = Keyword.get(opts, :git_context_module, Sykli.GitContext)

    case prepare_git_context_with_opts(path, git_opts, module) do
      {:ok, _ctx, pass_through} ->
        {:ok, [{:target, Keyword.get(opts, :target, Sykli.Target.K8s)} | pass_through]}

      {:error, reason} ->
        {:error, reason}
    end
  end

  # cli.ex do_run_sykli: each key is prepended, so timeout comes first, then filter.
  defp cli_run_opts(opts) do
    filter = opts[:filter]

    []
    |> then(&if(filter, do: [{:filter, fn task -> String.contains?(task.name, filter) end} | &1], else: &1))
    |> then(&if(opts[:timeout], do: [{:timeout, opts[:timeout]} | &1], else: &1))
  end

  @doc "sykli.ex prepare_git_context_with_opts/2, detecting with `module.detect(path)`."
  def prepare_git_context_with_opts(path, opts, module \\ Sykli.GitContext) do
    case prepare_git_context(path, opts, module) do
      {:ok, ctx} ->
        pass_through =
          Enum.reject(
            [
              git_context: ctx,
              git_ssh_secret: opts[:git_ssh_secret],
              git_token_secret: opts[:git_token_secret]
            ],
            fn {_k, v} -> is_nil(v) end
          )

        {:ok, ctx, pass_through}

      error ->
        error
    end
  end

  defp prepare_git_context(path, opts, module) do
    ctx =
      case Keyword.get(opts, :git_context) do
        nil -> module.detect(path)
        explicit -> explicit
      end

    # No catch-all, as upstream: `{:ok, ctx}` (or anything not a map) is a CaseClauseError.
    case ctx do
      {:error, reason} ->
        {:error, reason}

      ctx when is_map(ctx) ->
        case validate_git_context(ctx, opts) do
          :ok -> {:ok, ctx}
          error -> error
        end
    end
  end

  @doc "sykli.ex validate_git_context/2: `ctx.dirty` by dot access, combined with `and`."
  def validate_git_context(ctx, opts) do
    if ctx.dirty and not Keyword.get(opts, :allow_dirty, false), do: {:error, :dirty_workdir}, else: :ok
  end

  # sykli.ex run/2 after the SDK emission.
  defp sykli_run(path, run_opts, pipeline, opts) do
    with {:ok, graph} <- Sykli.Graph.parse_map(pipeline) do
      graph = Sykli.Graph.expand_matrix(graph)
      graph = if f = run_opts[:filter], do: Sykli.Graph.filter(graph, f), else: graph

      with {:ok, order} <- Sykli.Graph.topo_sort(graph) do
        result =
          Sykli.Executor.run(order, graph, Keyword.merge(run_opts, workdir: path),
            max_parallel: opts[:max_parallel]
          )

        check_history_outputs(result)
        result
      end
    end
  end

  # Sykli.run writes each non-empty TaskResult.output with File.write!, which raises on a
  # value that is not iodata.
  defp check_history_outputs({_, results}) when is_list(results) do
    for %TaskResult{output: out} <- results, out not in [nil, ""], do: IO.iodata_to_binary(out)
    :ok
  end

  defp check_history_outputs(_), do: :ok

  @doc """
  Runs `fun` with the calling process's group leader replaced by a sink that discards all
  output (sykli's suppress_stdout; executor tasks inherit it), restoring it afterwards,
  whatever `fun` does. stderr (`:standard_error`) is untouched: capture it with
  `ExUnit.CaptureIO.capture_io(:stderr, …)`.
  """
  def with_stdout_discarded(fun) do
    original = Process.group_leader()
    owner = self()
    sink = spawn(fn -> sink(Process.monitor(owner)) end)
    Process.group_leader(self(), sink)

    try do
      fun.()
    after
      Process.group_leader(self(), original)
      Process.exit(sink, :kill)
    end
  end

  defp sink(owner_ref) do
    receive do
      {:io_request, from, reply_as, request} ->
        send(from, {:io_reply, reply_as, io_reply(request)})
        sink(owner_ref)

      {:DOWN, ^owner_ref, :process, _, _} ->
        :ok

      _ ->
        sink(owner_ref)
    end
  end

  defp io_reply({:put_chars, _chars}), do: :ok
  defp io_reply({:put_chars, _encoding, _chars}), do: :ok
  defp io_reply({:put_chars, _m, _f, _a}), do: :ok
  defp io_reply({:put_chars, _encoding, _m, _f, _a}), do: :ok
  defp io_reply({:requests, requests}), do: Enum.reduce(requests, :ok, fn r, _ -> io_reply(r) end)
  defp io_reply({:setopts, _}), do: :ok
  defp io_reply(:getopts), do: []
  defp io_reply({:get_geometry, _}), do: {:error, :enotsup}
  defp io_reply(request) when elem(request, 0) in [:get_chars, :get_line, :get_until, :get_password], do: :eof
  defp io_reply(_), do: {:error, :request}

  @doc """
  What sykli's renderer (cli/renderer.ex:172) shows for a failed task: the last 10
  non-empty lines of the output if it is non-empty, else the Error's message and hints, else
  `inspect(error)`; each line indented by six spaces, as in the failure block. `nil` for a
  task that did not fail. A list renders every failed task's block, headed by its name. A
  `%Sykli.Error{}` renders with `Formatter.format_simple/2` without colours: the same lines
  as the CLI's boxed `display_error`, but untruncated (the box cuts rows at 58 columns), so a
  test can read whole hints.
  """
  def render(%TaskResult{status: status} = result) when status in [:failed, :errored] do
    case failure_output(result) do
      nil -> ""
      text -> text |> String.split("\n", trim: true) |> Enum.take(-10) |> Enum.map_join("\n", &"      #{&1}")
    end
  end

  def render(%TaskResult{}), do: nil
  def render(%Error{} = error), do: Sykli.Error.Formatter.format_simple(error, no_color: true)

  def render(results) when is_list(results) do
    results
    |> Enum.filter(&(&1.status in [:failed, :errored]))
    |> Enum.map_join("\n", &"  ✗  #{&1.name}\n\n#{render(&1)}\n")
  end

  @doc "The unindented text behind `render/1` (renderer.ex failure_output)."
  def failure_output(%TaskResult{output: out}) when is_binary(out) and out != "", do: out

  def failure_output(%TaskResult{error: %Error{} = e}),
    do: [e.message | e.hints || []] |> Enum.reject(&is_nil/1) |> Enum.join("\n")

  def failure_output(%TaskResult{error: error}) when not is_nil(error), do: inspect(error)
  def failure_output(_), do: nil
end
