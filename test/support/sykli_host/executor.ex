defmodule Sykli.SuccessCriteria do
  @moduledoc """
  Test double of sykli's `Sykli.SuccessCriteria` (core/lib/sykli/success_criteria.ex at
  797c36a): the `Result` struct, `parse/4` (criteria need pipeline version "3" and a
  non-review task; each is `exit_code` + `equals` 0..255, or `file_exists` / `file_non_empty`
  + `path`), `failures/1` and `unsupported_results/3`.
  """

  defmodule Result do
    @moduledoc "The result of one criterion."
    @enforce_keys [:index, :type, :status, :message]
    defstruct [:index, :type, :status, :message, :evidence, :target]
    @type t :: %__MODULE__{}
  end

  def parse(nil, _kind, _version, _task), do: {:ok, []}
  def parse(_criteria, :review, _version, task), do: {:error, {:success_criteria_on_review, task}}

  def parse(_criteria, _kind, version, task) when version != "3",
    do: {:error, {:success_criteria_requires_version_3, task, version}}

  def parse(criteria, _kind, "3", task) when is_list(criteria) do
    with nil <- Enum.find_value(criteria, &invalid(&1, task)),
         true <-
           Enum.count(criteria, &match?(%{"type" => "exit_code"}, &1)) <= 1 ||
             {:duplicate_exit_code_criteria, task} do
      {:ok,
       Enum.map(criteria, fn
         %{"type" => "exit_code", "equals" => n} -> %{"type" => "exit_code", "equals" => n}
         %{"type" => type, "path" => path} -> %{"type" => type, "path" => path}
       end)}
    else
      reason -> {:error, reason}
    end
  end

  def parse(_criteria, _kind, "3", task), do: {:error, {:invalid_success_criteria, task, "must be an array"}}

  defp invalid(%{"type" => "exit_code"} = c, task) do
    case Map.fetch(c, "equals") do
      {:ok, n} when is_integer(n) and n in 0..255 ->
        extra_keys(c, ["type", "equals"], task, "exit_code")

      {:ok, n} when is_integer(n) ->
        {:invalid_success_criteria, task, "exit_code.equals must be between 0 and 255"}

      {:ok, _} ->
        {:invalid_success_criteria, task, "exit_code.equals must be an integer"}

      :error ->
        {:invalid_success_criteria, task, "exit_code requires equals"}
    end
  end

  defp invalid(%{"type" => type} = c, task) when type in ["file_exists", "file_non_empty"] do
    case Map.fetch(c, "path") do
      {:ok, p} when is_binary(p) and p != "" -> extra_keys(c, ["type", "path"], task, type)
      {:ok, _} -> {:invalid_success_criteria, task, "#{type}.path must be a non-empty string"}
      :error -> {:invalid_success_criteria, task, "#{type} requires path"}
    end
  end

  defp invalid(%{"type" => type}, task), do: {:unknown_success_criterion_type, task, type}
  defp invalid(%{}, task), do: {:invalid_success_criteria, task, "criterion requires type"}
  defp invalid(_, task), do: {:invalid_success_criteria, task, "each criterion must be an object"}

  defp extra_keys(c, allowed, task, type) do
    case Map.keys(c) -- allowed do
      [] -> nil
      extra -> {:invalid_success_criteria, task, "#{type} has unknown keys: #{Enum.join(extra, ", ")}"}
    end
  end

  def passed?(%Result{status: status}), do: status == :passed
  def failures(results), do: Enum.reject(results, &passed?/1)

  def unsupported_results(criteria, target_name, message) do
    criteria
    |> Enum.with_index()
    |> Enum.map(fn {c, i} ->
      %Result{
        index: i,
        type: Map.get(c, "type", "unknown"),
        status: :unsupported,
        message: message,
        evidence: c,
        target: target_name
      }
    end)
  end
end

defmodule Sykli.Target.Behaviour do
  @moduledoc """
  Test double of sykli's `Sykli.Target.Behaviour` (core/lib/sykli/target/behaviour.ex at
  797c36a, lines 118-293): the callbacks of contract §3; only `evaluate_success_criteria/4`
  is optional. `run_opts` is exactly `[workdir:, network:, progress: {n, total}]`.
  """

  @type state :: term()
  @type run_opts :: [workdir: String.t(), network: String.t() | nil, progress: {integer(), integer()}]

  @callback name() :: String.t()
  @callback available?() :: {:ok, map()} | {:error, term()}
  @callback setup(opts :: keyword()) :: {:ok, state()} | {:error, term()}
  @callback teardown(state()) :: :ok
  @callback run_task(Sykli.Graph.Task.t(), state(), run_opts()) :: :ok | {:ok, String.t()} | {:error, term()}
  @callback evaluate_success_criteria(Sykli.Graph.Task.t(), [map()], state(), keyword()) ::
              {:ok, [Sykli.SuccessCriteria.Result.t()]}
              | {:error, Sykli.Error.t(), [Sykli.SuccessCriteria.Result.t()]}
  @callback resolve_secret(name :: String.t(), state()) :: {:ok, String.t()} | {:error, :not_found}
  @callback create_volume(name :: String.t(), %{optional(:size) => String.t()}, state()) ::
              {:ok, %{id: String.t(), host_path: String.t() | nil, reference: String.t()}} | {:error, term()}
  @callback artifact_path(task :: String.t(), name :: String.t(), workdir :: String.t(), state()) ::
              String.t()
  @callback copy_artifact(src :: String.t(), dest :: String.t(), workdir :: String.t(), state()) ::
              :ok | {:error, term()}
  @callback start_services(task_name :: String.t(), [Sykli.Graph.Service.t()], state()) ::
              {:ok, term()} | {:error, term()}
  @callback stop_services(info :: term(), state()) :: :ok

  @optional_callbacks evaluate_success_criteria: 4
end

defmodule Sykli.Executor do
  @moduledoc """
  Test double of sykli's `Sykli.Executor` (core/lib/sykli/executor.ex at 797c36a): run/3
  (107-137), do_run (139-171), the level loop in chunks of `max_parallel` under
  `Task.Supervisor.async_nolink(Sykli.TaskSupervisor, …)` collected with
  `Task.yield_many(:infinity)` (each task process takes the caller's group leader, 320-326),
  and per task (in its own process): copy_artifact for each task_input, secret_refs merged
  into env, resolve_secret for each secret, `(retry || 0) + 1` attempts (at least 3 with
  `ai_hooks.on_fail: :retry`), start_services / run_task / stop_services (in an `after`) with
  `run_opts` exactly `[workdir: state.workdir, network: net | nil, progress: {n, total}]`,
  and success criteria (872-960). Upstream's `case`s are kept without catch-alls, so an
  unexpected answer from the target is a CaseClauseError in the task process, hence
  `:errored`.

  Left out: the local cache (a task never is `:cached`; `state.workdir` is still read where
  the cache lookup reads it), conditions (every task runs), gates, OIDC, `:smart` selection
  (only `select: :manual` drops a task), mesh, occurrences, SCM status, telemetry, output.
  """

  alias Sykli.Error

  defmodule TaskResult do
    @moduledoc "executor.ex: status is :passed | :failed | :errored | :cached | :skipped | :blocked."
    @enforce_keys [:name, :status, :duration_ms]
    defstruct [:name, :status, :duration_ms, :error, :output, :command, success_criteria_results: []]
    @type t :: %__MODULE__{}
  end

  def default_max_parallel, do: :erlang.system_info(:logical_processors_available) * 2

  @doc """
  `run(tasks, graph, opts)` as upstream; `setup/1` gets `opts` untouched. `harness` may hold
  `max_parallel:` so a test can limit concurrency without adding a key setup would see
  (sykli's CLI never forwards `--max-parallel`).
  """
  def run(tasks, graph, opts \\ [], harness \\ []) do
    target = Keyword.get(opts, :target) || Keyword.get(opts, :executor, Sykli.Target.Local)

    max_parallel =
      Keyword.get(harness, :max_parallel) || Keyword.get(opts, :max_parallel, default_max_parallel())

    case Sykli.Graph.validate_artifacts(graph) do
      {:error, reason} -> {:error, Error.artifact_error(reason)}
      :ok -> do_run(tasks, graph, target, opts, max_parallel)
    end
  end

  defp do_run(tasks, graph, target, opts, max_parallel) do
    ensure_task_supervisor()

    case target.setup(opts) do
      {:ok, state} ->
        try do
          tasks = Enum.reject(tasks, &match?(%{ai_hooks: %{select: :manual}}, &1))
          levels = group_by_level(tasks, graph)
          run_levels(levels, state, [], {0, length(tasks)}, graph, target, max_parallel)
        after
          target.teardown(state)
        end

      {:error, reason} ->
        {:error, Error.internal("target setup failed", cause: reason)}
    end
  end

  @doc "Starts the named `Sykli.TaskSupervisor` (unlinked) unless it runs."
  def ensure_task_supervisor do
    with nil <- Process.whereis(Sykli.TaskSupervisor) do
      case Task.Supervisor.start_link(name: Sykli.TaskSupervisor) do
        {:ok, pid} -> Process.unlink(pid)
        {:error, {:already_started, _}} -> :ok
      end
    end

    :ok
  end

  def group_by_level(tasks, graph) do
    tasks
    |> Enum.group_by(&level(&1.name, graph))
    |> Enum.sort_by(fn {level, _} -> level end)
    |> Enum.map(fn {_, level_tasks} -> level_tasks end)
  end

  defp level(name, graph) do
    case (graph[name] && graph[name].depends_on) || [] do
      [] -> 0
      deps -> 1 + (deps |> Enum.map(&level(&1, graph)) |> Enum.max())
    end
  end

  defp run_levels([], _state, acc, _progress, _graph, _target, _max), do: {:ok, Enum.reverse(acc)}

  defp run_levels([level | rest], state, acc, {done, total}, graph, target, max) do
    results =
      level
      |> sort_level()
      |> Enum.chunk_every(max)
      |> Enum.reduce({[], done}, fn chunk, {results, started} ->
        {results ++ run_chunk(chunk, started, total, state, graph, target), started + length(chunk)}
      end)
      |> elem(0)

    if Enum.any?(results, &(&1.status in [:failed, :errored])) do
      blocked =
        for task <- List.flatten(rest),
            do: %TaskResult{
              name: task.name,
              status: :blocked,
              duration_ms: 0,
              error: :dependency_failed,
              command: task.command
            }

      {:error, Enum.reverse(acc, results ++ blocked)}
    else
      run_levels(rest, state, Enum.reverse(results, acc), {done + length(level), total}, graph, target, max)
    end
  end

  defp sort_level(tasks) do
    Enum.sort_by(tasks, fn task ->
      critical = if task.semantic && task.semantic.criticality == :high, do: 0, else: 1
      flaky = if task.history_hint && task.history_hint.flaky, do: 1, else: 0
      {critical, flaky, (task.history_hint && task.history_hint.avg_duration_ms) || 1000}
    end)
  end

  defp run_chunk(chunk, started, total, state, graph, target) do
    counter = :atomics.new(1, [])
    :atomics.put(counter, 1, started)
    caller_gl = Process.group_leader()

    chunk
    |> Enum.map(fn task ->
      Task.Supervisor.async_nolink(Sykli.TaskSupervisor, fn ->
        Process.group_leader(self(), caller_gl)
        n = :atomics.add_get(counter, 1, 1)
        start = System.monotonic_time(:millisecond)

        case resolve_task_inputs(task, graph, state, target) do
          :ok ->
            %TaskResult{} = result = run_single(task, state, {n, total}, target)
            %TaskResult{result | duration_ms: System.monotonic_time(:millisecond) - start}

          {:error, reason} ->
            %TaskResult{
              name: task.name,
              status: :errored,
              duration_ms: System.monotonic_time(:millisecond) - start,
              error: reason,
              command: task.command
            }
        end
      end)
    end)
    |> Task.yield_many(:infinity)
    |> Enum.zip(chunk)
    |> Enum.map(fn
      {{_ref, {:ok, result}}, _task} ->
        result

      {{ref, {:exit, reason}}, task} ->
        Task.shutdown(ref, :brutal_kill)

        %TaskResult{
          name: task.name,
          status: :errored,
          duration_ms: 0,
          error: Error.internal("task process crashed: #{inspect(reason)}"),
          command: task.command
        }
    end)
  end

  # services/artifact_resolver.ex: every input is copied, then the first error is answered.
  defp resolve_task_inputs(%{task_inputs: inputs}, _graph, _state, _target) when inputs in [nil, []], do: :ok

  defp resolve_task_inputs(task, graph, state, target) do
    task.task_inputs
    |> Enum.map(fn %Sykli.Graph.TaskInput{from_task: from, output: output, dest: dest} ->
      workdir = state.workdir

      with {:source, %{} = source} <- {:source, graph[from]},
           {:output, src} when not is_nil(src) <- {:output, Map.get(source.outputs || %{}, output)} do
        case target.copy_artifact(src, dest, workdir, state) do
          :ok -> :ok
          {:error, reason} -> {:error, {:copy_failed, src, reason}}
        end
      else
        {:source, nil} -> {:error, {:source_task_not_found, from}}
        {:output, nil} -> {:error, {:output_not_found, from, output}}
      end
    end)
    |> Enum.find(:ok, &match?({:error, _}, &1))
  end

  defp run_single(task, state, progress, target) do
    start = System.monotonic_time(:millisecond)
    task = resolve_secret_refs(task)

    missing =
      Enum.filter(task.secrets || [], fn name ->
        case target.resolve_secret(name, state) do
          {:ok, _} -> false
          {:error, _} -> true
        end
      end)

    if missing == [] do
      _cache_lookup_reads = state.workdir
      run_with_retry(task, state, progress, target, start)
    else
      %TaskResult{
        name: task.name,
        status: :errored,
        duration_ms: System.monotonic_time(:millisecond) - start,
        error: Error.missing_secrets(task.name, missing),
        command: task.command
      }
    end
  end

  defp resolve_secret_refs(%{secret_refs: [_ | _] = refs} = task) do
    resolved =
      Enum.reduce(refs, %{}, fn ref, acc ->
        case secret_ref(ref) do
          {:ok, value} -> Map.put(acc, ref.name, value)
          _ -> acc
        end
      end)

    %{task | env: Map.merge(task.env || %{}, resolved)}
  end

  defp resolve_secret_refs(task), do: task

  defp secret_ref(%{source: "env", key: key}), do: if(v = System.get_env(key), do: {:ok, v}, else: :error)

  defp secret_ref(%{source: "file", key: path}) do
    abs = Path.expand(path)
    cwd = File.cwd!()

    with true <- abs == cwd or String.starts_with?(abs, cwd <> "/"),
         {:ok, content} <- File.read(abs) do
      {:ok, String.trim(content)}
    end
  end

  defp secret_ref(_), do: :error

  defp run_with_retry(task, state, progress, target, start) do
    task =
      case task.ai_hooks do
        %{on_fail: :retry} -> %{task | retry: max(task.retry || 0, 2)}
        _ -> task
      end

    result = attempt(task, state, progress, target, start, 1, (task.retry || 0) + 1)

    case {result, task.ai_hooks} do
      {%TaskResult{status: s}, %{on_fail: :skip}} when s in [:failed, :errored] ->
        %{result | status: :skipped}

      _ ->
        result
    end
  end

  defp attempt(task, state, progress, target, start, n, max) do
    case run_and_collect(task, state, progress, target) do
      {:ok, output, criteria_results} ->
        %TaskResult{
          name: task.name,
          status: :passed,
          duration_ms: System.monotonic_time(:millisecond) - start,
          output: output,
          command: task.command,
          success_criteria_results: criteria_results
        }

      _failure when n < max ->
        attempt(task, state, progress, target, start, n + 1, max)

      failure ->
        {reason, criteria_results} =
          case failure do
            {:error, reason, results} -> {reason, results}
            {:error, reason} -> {reason, []}
          end

        %TaskResult{
          name: task.name,
          status: :failed,
          duration_ms: System.monotonic_time(:millisecond) - start,
          error: reason,
          output: error_output(reason),
          command: task.command,
          success_criteria_results: criteria_results
        }
    end
  end

  defp error_output(%Error{output: out}) when is_binary(out), do: out
  defp error_output(_), do: nil

  defp run_and_collect(task, state, progress, target) do
    workdir = state.workdir

    case target.start_services(task.name, task.services || [], state) do
      {:ok, info} ->
        try do
          network =
            case info do
              {net, _containers, _runtime} -> net
              {net, _containers} -> net
              _ -> nil
            end

          run_opts = [workdir: workdir, network: network, progress: progress]
          start = System.monotonic_time(:millisecond)
          result = target.run_task(task, state, run_opts)
          duration_ms = System.monotonic_time(:millisecond) - start

          case result do
            {:ok, output} -> criteria(task, target, state, run_opts, output, duration_ms)
            :ok -> criteria(task, target, state, run_opts, nil, duration_ms)
            {:error, reason} -> {:error, reason}
          end
        after
          target.stop_services(info, state)
        end

      {:error, reason} ->
        {:error, {:service_start_failed, reason}}
    end
  end

  defp criteria(task, target, state, run_opts, output, duration_ms) do
    case Sykli.Graph.Task.success_criteria(task) do
      [] ->
        {:ok, output, []}

      criteria ->
        opts =
          run_opts
          |> Keyword.put(:command_exit_code, 0)
          |> Keyword.put(:command_output, output)
          |> Keyword.put(:duration_ms, duration_ms)

        if function_exported?(target, :evaluate_success_criteria, 4) do
          case target.evaluate_success_criteria(task, criteria, state, opts) do
            {:ok, results} -> {:ok, output, results}
            {:error, reason, results} -> {:error, reason, results}
          end
        else
          name = if function_exported?(target, :name, 0), do: target.name(), else: inspect(target)

          results =
            Sykli.SuccessCriteria.unsupported_results(
              criteria,
              name,
              "target does not support success_criteria evaluation"
            )

          {:error,
           Error.unsupported_success_criteria_for_target(task.name, name, results,
             command: task.command,
             output: output,
             duration_ms: duration_ms
           ), results}
        end
    end
  end
end
