defmodule SykliK8s.Run do
  @moduledoc """
  Runs a pipeline's tasks as Kubernetes Jobs in dependency order.

  Independent tasks run in parallel, at most `:jobs` at a time, in the pipeline's order. A
  task whose dependency did not succeed is skipped (it never reaches the cluster). An
  interrupt (`interrupt/1`, sent by the command line on Ctrl-C) cancels every running task
  (their Jobs are deleted) and starts nothing more.

  Everything that happens is reported to `:report`, a function of one event:

    * `{:task_started, name, %{job: job}}`
    * `{:task_log, name, container, line}`
    * `{:task_phase, name, phase, message}`
    * `{:task_finished, name, result}`

  A result is `%{name, status, duration_ms, job, kind, reason, exit_code}` with status
  `:succeeded`, `:failed`, `:skipped` or `:cancelled`.
  """

  alias SykliK8s.{Error, Target}

  @type result :: %{
          name: String.t(),
          status: :succeeded | :failed | :skipped | :cancelled,
          duration_ms: non_neg_integer() | nil,
          job: String.t() | nil,
          kind: atom() | nil,
          reason: String.t() | nil,
          exit_code: integer() | nil
        }

  # Fields the sykli engine handles before it calls a target; this runner does not, and a
  # silently ignored condition or secret would run the wrong thing.
  @engine_fields ~w(when condition matrix task_inputs secrets retry)

  @doc """
  Checks that `pipeline` uses nothing this runner would ignore (conditions, matrices,
  artifacts between tasks, secrets, retries): `:ok` or an error naming each task and field.
  """
  @spec supported(map()) :: :ok | {:error, Error.t()}
  def supported(pipeline) do
    problems =
      for task <- List.wrap(pipeline["tasks"]),
          is_map(task),
          field <- @engine_fields,
          task[field] not in [nil, [], %{}, false, 0],
          do: "task #{inspect(task["name"])}: #{field}"

    if problems == [] do
      :ok
    else
      {:error,
       %Error{
         kind: :unsupported,
         message:
           "sykli run --target=k8s does not handle these yet (the sykli engine does, before it calls the target): " <>
             Enum.join(problems, ", ") <> ". Remove them, or run the pipeline with the sykli engine"
       }}
    end
  end

  @doc "Asks the run in `pid` to stop: running tasks are cancelled, nothing more starts."
  @spec interrupt(pid()) :: :ok
  def interrupt(pid) do
    send(pid, {__MODULE__, :interrupt})
    :ok
  end

  @doc """
  Runs `pipeline` (decoded pipeline JSON) with the target `state` (from
  `SykliK8s.Target.setup/1`) in the calling process. Returns `{status, results}` with
  status `:succeeded`, `:failed` or `:cancelled` and one result per task, in pipeline order.

  `opts`: `:jobs` (parallel tasks, default 4), `:report` (default: ignore), and the options
  of `SykliK8s.Target.start_task/3` (`:keep_failed`, `:create_namespace`, …).
  """
  @spec run(map(), map(), keyword()) :: {:succeeded | :failed | :cancelled, [result()]}
  def run(pipeline, state, opts \\ []) do
    tasks = Enum.map(pipeline["tasks"] || [], fn task -> {task["name"], task} end)

    run = %{
      order: Enum.map(tasks, &elem(&1, 0)),
      tasks: Map.new(tasks),
      pending: Enum.map(tasks, &elem(&1, 0)),
      running: %{},
      results: %{},
      interrupted: false,
      state: state,
      jobs: max(Keyword.get(opts, :jobs, 4), 1),
      report: Keyword.get(opts, :report, fn _ -> :ok end),
      task_opts: Keyword.merge(Keyword.drop(opts, [:jobs, :report]), resources: pipeline["resources"] || %{})
    }

    run |> schedule() |> loop() |> finish()
  end

  defp loop(%{running: running} = run) when map_size(running) == 0, do: run

  defp loop(run) do
    receive do
      {__MODULE__, :interrupt} ->
        run |> interrupt_all() |> loop()

      {tag, event} when is_map_key(run.running, tag) ->
        run |> handle(tag, event) |> loop()
    end
  end

  defp handle(run, tag, {:done, outcome}) do
    {{name, task_run, started}, running} = Map.pop(run.running, tag)
    result = result(name, outcome, started, run) |> finish(run, name, task_run.job, namespace(outcome))
    run.report.({:task_finished, name, result})
    schedule(%{run | running: running, results: Map.put(run.results, name, result)})
  end

  defp handle(run, tag, {:log, container, line}) do
    {name, _, _} = run.running[tag]
    run.report.({:task_log, name, container, line})
    run
  end

  defp handle(run, tag, {:phase, phase, message}) do
    {name, _, _} = run.running[tag]
    run.report.({:task_phase, name, phase, message})
    run
  end

  defp handle(run, _tag, _other), do: run

  # What a source strategy does after a task (the PVC strategy: outputs back, its copy of
  # the tree removed). Outputs that cannot come back fail the task.
  defp finish(result, run, name, job, namespace) do
    case Target.finish_task(run.state, run.tasks[name], job, namespace, result.status == :succeeded) do
      {:ok, %{files: files}} when files > 0 ->
        run.report.({:task_phase, name, :synced_back, "#{files} output files copied back"})
        result

      {:ok, _} ->
        result

      {:error, %Error{} = e} when result.status == :succeeded ->
        %{
          result
          | status: :failed,
            kind: e.kind,
            reason: "its outputs could not be copied back: " <> e.message
        }

      {:error, %Error{} = e} ->
        run.report.({:task_phase, name, :cleanup_failed, e.message})
        result
    end
  end

  # Where the Job ran (none when it was never created).
  defp namespace({:ok, outcome}), do: outcome[:namespace]
  defp namespace({:error, {_kind, _message, outcome}}) when is_map(outcome), do: outcome[:namespace]
  defp namespace(_), do: nil

  defp result(name, {:ok, outcome}, started, _run) do
    %{base(name, started, outcome) | status: :succeeded}
  end

  defp result(name, {:error, {kind, message, outcome}}, started, run) do
    status = if kind == :cancelled or (run.interrupted and kind == :timeout), do: :cancelled, else: :failed
    %{base(name, started, outcome) | status: status, kind: kind, reason: message}
  end

  defp base(name, started, outcome) do
    outcome = if is_map(outcome), do: outcome, else: %{}

    %{
      name: name,
      status: nil,
      duration_ms: System.monotonic_time(:millisecond) - started,
      job: outcome[:job],
      kind: nil,
      reason: nil,
      exit_code: outcome[:exit_code]
    }
  end

  # Starts what can start, skips what never will, in pipeline order.
  defp schedule(%{interrupted: true} = run), do: run

  defp schedule(run) do
    after_pass = schedule_pass(run)
    # A task that failed to start can settle tasks earlier in the order: go round again.
    if map_size(after_pass.results) > map_size(run.results), do: schedule(after_pass), else: after_pass
  end

  defp schedule_pass(run) do
    Enum.reduce(run.pending, %{run | pending: []}, fn name, run ->
      deps = List.wrap(run.tasks[name]["depends_on"])

      case Enum.find(deps, &(run.results[&1] && run.results[&1].status != :succeeded)) do
        nil ->
          if Enum.all?(deps, &run.results[&1]) and map_size(run.running) < run.jobs,
            do: start(run, name),
            else: %{run | pending: run.pending ++ [name]}

        dep ->
          skip(run, name, "depends on #{dep}, which #{verb(run.results[dep].status)}")
      end
    end)
  end

  defp verb(:failed), do: "failed"
  defp verb(:skipped), do: "was skipped"
  defp verb(:cancelled), do: "was cancelled"

  defp skip(run, name, reason) do
    result = %{
      name: name,
      status: :skipped,
      duration_ms: nil,
      job: nil,
      kind: nil,
      reason: reason,
      exit_code: nil
    }

    run.report.({:task_finished, name, result})
    %{run | results: Map.put(run.results, name, result)}
  end

  defp start(run, name) do
    started = System.monotonic_time(:millisecond)

    case Target.start_task(run.tasks[name], run.state, run.task_opts) do
      {:ok, task_run} ->
        run.report.({:task_started, name, %{job: task_run.job}})
        %{run | running: Map.put(run.running, task_run.tag, {name, task_run, started})}

      {:error, %Error{} = e} ->
        result = %{base(name, started, %{}) | status: :failed, kind: e.kind, reason: e.message}
        run.report.({:task_finished, name, result})
        %{run | results: Map.put(run.results, name, result)}
    end
  end

  defp interrupt_all(%{interrupted: true} = run), do: run

  defp interrupt_all(run) do
    Enum.each(run.running, fn {_tag, {_name, task_run, _}} -> Target.cancel(task_run) end)

    run =
      Enum.reduce(run.pending, run, fn name, run ->
        result = %{
          name: name,
          status: :cancelled,
          duration_ms: nil,
          job: nil,
          kind: :cancelled,
          reason: "not started: the run was interrupted",
          exit_code: nil
        }

        run.report.({:task_finished, name, result})
        %{run | results: Map.put(run.results, name, result)}
      end)

    %{run | pending: [], interrupted: true}
  end

  defp finish(run) do
    results = Enum.map(run.order, &run.results[&1])

    status =
      cond do
        run.interrupted -> :cancelled
        Enum.all?(results, &(&1.status == :succeeded)) -> :succeeded
        true -> :failed
      end

    {status, results}
  end
end
