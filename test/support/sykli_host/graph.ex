defmodule Sykli.Graph do
  @moduledoc """
  Test double of sykli's `Sykli.Graph` (core/lib/sykli/graph.ex; Task struct at 71-131,
  task parse at 425-476): turns a decoded pipeline map (string keys, as
  `SykliK8s.JSON.decode!/1` gives) into `%Sykli.Graph.Task{}` values as upstream's parse does,
  and the graph steps `Sykli.run/2` takes before the executor: `expand_matrix/1`,
  `filter/2`, `topo_sort/1`, `validate_artifacts/1`.

  Only `tasks` and `version` of the pipeline are read: its top-level `resources` is dropped,
  as upstream drops it (graph.ex:358-373).
  """

  alias Sykli.Error
  alias Sykli.Graph.{Service, Task, TaskInput}

  defmodule Service do
    @moduledoc "A service container of a task (graph.ex)."
    defstruct [:image, :name]
    @type t :: %__MODULE__{image: String.t(), name: String.t()}
  end

  defmodule TaskInput do
    @moduledoc "An artifact input: `output` of `from_task`, copied to `dest` (graph.ex)."
    defstruct [:from_task, :output, :dest]
    @type t :: %__MODULE__{from_task: String.t(), output: String.t(), dest: String.t()}
  end

  defmodule Task.Semantic do
    @moduledoc "graph/task/semantic.ex: `from_map(nil)` is the empty struct."
    defstruct covers: [], intent: nil, criticality: nil

    def from_map(nil), do: %__MODULE__{}

    def from_map(map) when is_map(map) do
      criticality = %{"high" => :high, "medium" => :medium, "low" => :low}[map["criticality"]]
      %__MODULE__{covers: map["covers"] || [], intent: map["intent"], criticality: criticality}
    end
  end

  defmodule Task.AiHooks do
    @moduledoc "graph/task/ai_hooks.ex: on_fail (:analyze | :retry | :skip), select (:smart | :always | :manual)."
    defstruct on_fail: nil, select: nil

    def from_map(nil), do: %__MODULE__{}

    def from_map(map) when is_map(map) do
      %__MODULE__{
        on_fail: %{"analyze" => :analyze, "retry" => :retry, "skip" => :skip}[map["on_fail"]],
        select: %{"smart" => :smart, "always" => :always, "manual" => :manual}[map["select"]]
      }
    end
  end

  defmodule Task.HistoryHint do
    @moduledoc "graph/task/history_hint.ex: learned data; `last_failure` is a DateTime."
    defstruct flaky: false,
              avg_duration_ms: nil,
              failure_patterns: [],
              pass_rate: nil,
              last_failure: nil,
              streak: 0

    def from_map(nil), do: %__MODULE__{}

    def from_map(map) when is_map(map) do
      last_failure =
        with s when is_binary(s) <- map["last_failure"], {:ok, dt, _} <- DateTime.from_iso8601(s) do
          dt
        else
          _ -> nil
        end

      %__MODULE__{
        flaky: map["flaky"] == true,
        avg_duration_ms: map["avg_duration_ms"],
        failure_patterns: map["failure_patterns"] || [],
        pass_rate: map["pass_rate"],
        last_failure: last_failure,
        streak: map["streak"] || 0
      }
    end
  end

  defmodule Task do
    @moduledoc """
    A task as sykli's executor hands it to the target (graph.ex:71-131; contract §4). A plain
    struct: it does not implement Access, so `task[:name]` raises, as upstream.

    `capability`, `gate`, `oidc` and `review` are kept as the pipeline's raw maps (or nil):
    the harness does not model them and the executor double runs no gates.
    """

    defstruct [
      :name,
      :kind,
      :task_type,
      :command,
      :container,
      :workdir,
      :timeout,
      :retry,
      :inputs,
      :outputs,
      :task_inputs,
      :depends_on,
      :condition,
      :matrix,
      :matrix_values,
      :env,
      :secrets,
      :secret_refs,
      :services,
      :mounts,
      :k8s,
      :requires,
      :verify,
      :semantic,
      :ai_hooks,
      :history_hint,
      :capability,
      :gate,
      :oidc,
      :review,
      :success_criteria
    ]

    @type t :: %__MODULE__{}

    def success_criteria(%__MODULE__{success_criteria: c}), do: c || []
    def gate?(%__MODULE__{gate: g}), do: g != nil
  end

  @doc """
  `{:ok, %{name => task}}` or `{:error, reason}` (an invalid mount or service gives a
  `%Sykli.Error{}` with the task's name; a pipeline without `tasks` gives `:invalid_format`).
  """
  def parse_map(pipeline) do
    with {:ok, tasks} <- parse_list(pipeline), do: {:ok, Map.new(tasks, &{&1.name, &1})}
  end

  @doc "The pipeline's tasks in pipeline order; raises the parse error."
  def parse_tasks(pipeline) do
    case parse_list(pipeline) do
      {:ok, tasks} -> tasks
      {:error, %Error{} = e} -> raise e
      {:error, reason} -> raise ArgumentError, "invalid pipeline: #{inspect(reason)}"
    end
  end

  defp parse_list(%{"tasks" => tasks} = pipeline) when is_list(tasks) do
    version = pipeline["version"]
    map_ok(tasks, &parse_task(&1, version))
  end

  defp parse_list(_), do: {:error, :invalid_format}

  @doc "One task map (string keys) of a pipeline of `version`."
  def parse_task(map, version \\ nil) do
    name = map["name"]
    kind = if map["kind"] == "review", do: :review, else: :task

    with {:ok, services} <- parse_services(map["services"], name),
         {:ok, mounts} <- parse_mounts(map["mounts"], name),
         {:ok, criteria} <- Sykli.SuccessCriteria.parse(map["success_criteria"], kind, version, name) do
      {:ok,
       %Task{
         name: name,
         kind: kind,
         task_type: map["task_type"],
         command: map["command"],
         container: map["container"],
         workdir: map["workdir"],
         timeout: map["timeout"],
         retry: map["retry"],
         inputs: map["inputs"] || [],
         outputs: normalize_outputs(map["outputs"]),
         task_inputs: parse_task_inputs(map["task_inputs"]),
         depends_on: Enum.uniq(map["depends_on"] || []),
         condition: map["when"] || map["condition"],
         matrix: map["matrix"],
         matrix_values: nil,
         env: map["env"] || %{},
         secrets: map["secrets"] || [],
         secret_refs: parse_secret_refs(map["secret_refs"]),
         services: services,
         mounts: mounts,
         k8s: Sykli.Target.K8sOptions.parse(map["k8s"]),
         requires: map["requires"] || [],
         verify: map["verify"],
         semantic: Task.Semantic.from_map(map["semantic"]),
         ai_hooks: Task.AiHooks.from_map(map["ai_hooks"]),
         history_hint: Task.HistoryHint.from_map(map["history_hint"]),
         capability:
           if(map["provides"] || map["needs"], do: %{"provides" => map["provides"], "needs" => map["needs"]}),
         gate: map["gate"],
         oidc: map["oidc"],
         review: map["review"],
         success_criteria: criteria
       }}
    end
  end

  defp parse_task_inputs(nil), do: []

  defp parse_task_inputs(inputs),
    do: Enum.map(inputs, &%TaskInput{from_task: &1["from_task"], output: &1["output"], dest: &1["dest"]})

  defp parse_secret_refs(nil), do: []
  defp parse_secret_refs(refs), do: Enum.map(refs, &%{name: &1["name"], source: &1["source"], key: &1["key"]})

  defp parse_services(nil, _task), do: {:ok, []}

  defp parse_services(services, task) do
    map_ok(services, fn s ->
      cond do
        s["image"] in [nil, ""] -> {:error, Error.invalid_service(:image, s["name"]) |> Error.with_task(task)}
        s["name"] in [nil, ""] -> {:error, Error.invalid_service(:name) |> Error.with_task(task)}
        true -> {:ok, %Service{image: s["image"], name: s["name"]}}
      end
    end)
  end

  defp parse_mounts(nil, _task), do: {:ok, []}

  defp parse_mounts(mounts, task) do
    map_ok(mounts, fn m ->
      cond do
        m["resource"] in [nil, ""] ->
          {:error, Error.invalid_mount(:resource) |> Error.with_task(task)}

        m["path"] in [nil, ""] ->
          {:error, Error.invalid_mount(:path) |> Error.with_task(task)}

        m["type"] not in ["directory", "cache"] ->
          {:error, Error.invalid_mount(:type, "got: #{inspect(m["type"])}") |> Error.with_task(task)}

        true ->
          {:ok, %{resource: m["resource"], path: m["path"], type: m["type"]}}
      end
    end)
  end

  defp normalize_outputs(nil), do: %{}

  defp normalize_outputs(outputs) when is_list(outputs),
    do: outputs |> Enum.with_index() |> Map.new(fn {path, i} -> {"output_#{i}", path} end)

  defp normalize_outputs(outputs) when is_map(outputs), do: outputs

  @doc "Matrix tasks become `name-v1-v2` copies (values in key order), matrix values merged into env."
  def expand_matrix(graph) do
    {tasks, expanded} =
      Enum.reduce(graph, {%{}, MapSet.new()}, fn {name, task}, {acc, names} ->
        case task.matrix do
          m when m in [nil, %{}] ->
            {Map.put(acc, name, task), names}

          matrix ->
            copies =
              for combo <- combinations(Enum.to_list(matrix)), into: %{} do
                suffix = combo |> Enum.sort() |> Enum.map_join("-", fn {_k, v} -> v end)

                copy = %{
                  task
                  | name: "#{name}-#{suffix}",
                    matrix: nil,
                    matrix_values: combo,
                    env: Map.merge(task.env || %{}, combo)
                }

                {copy.name, copy}
              end

            {Map.merge(acc, copies), MapSet.put(names, name)}
        end
      end)

    Map.new(tasks, fn {name, task} ->
      deps =
        Enum.flat_map(task.depends_on || [], fn dep ->
          if MapSet.member?(expanded, dep),
            do: tasks |> Map.keys() |> Enum.filter(&String.starts_with?(&1, "#{dep}-")),
            else: [dep]
        end)

      {name, %{task | depends_on: deps}}
    end)
  end

  defp combinations([]), do: [%{}]

  defp combinations([{key, values} | rest]),
    do: for(value <- values, combo <- combinations(rest), do: Map.put(combo, key, value))

  @doc "The tasks matching `filter_fn` and all their transitive dependencies (sykli.ex filter_graph)."
  def filter(graph, filter_fn) do
    wanted = graph |> Map.values() |> Enum.filter(filter_fn) |> MapSet.new(& &1.name)
    needed = add_deps(MapSet.to_list(wanted), wanted, graph)
    Map.filter(graph, fn {name, _} -> MapSet.member?(needed, name) end)
  end

  defp add_deps([], acc, _graph), do: acc

  defp add_deps([name | rest], acc, graph) do
    new = Enum.reject((graph[name] && graph[name].depends_on) || [], &MapSet.member?(acc, &1))
    add_deps(rest ++ new, Enum.into(new, acc), graph)
  end

  @doc "Kahn's algorithm over the name-keyed map, as upstream: `{:ok, tasks}` or `{:error, {:cycle_detected, names}}`."
  def topo_sort(graph) do
    degrees =
      Enum.reduce(graph, Map.new(graph, fn {name, _} -> {name, 0} end), fn {_, task}, acc ->
        Enum.reduce(task.depends_on || [], acc, fn dep, acc -> Map.update(acc, dep, 0, & &1) end)
      end)

    degrees =
      Enum.reduce(graph, degrees, fn {_, task}, acc ->
        Enum.reduce(task.depends_on || [], acc, fn _dep, acc -> Map.update!(acc, task.name, &(&1 + 1)) end)
      end)

    queue = for {name, 0} <- degrees, do: name
    kahn(queue, degrees, graph, [])
  end

  defp kahn([], degrees, graph, result) do
    if Enum.any?(degrees, fn {_, d} -> d > 0 end),
      do: {:error, {:cycle_detected, cycle_path(graph)}},
      else: {:ok, Enum.reverse(result)}
  end

  defp kahn([current | rest], degrees, graph, result) do
    dependents = for {name, t} <- graph, current in (t.depends_on || []), do: name

    {degrees, queue} =
      Enum.reduce(dependents, {degrees, rest}, fn dep, {acc, q} ->
        acc = Map.update!(acc, dep, &(&1 - 1))
        if acc[dep] == 0, do: {acc, q ++ [dep]}, else: {acc, q}
      end)

    result = if task = graph[current], do: [task | result], else: result
    kahn(queue, Map.put(degrees, current, -1), graph, result)
  end

  # A cycle along depends_on edges, as `[a, b, a]`.
  defp cycle_path(graph), do: Enum.find_value(Map.keys(graph), [], &walk(&1, graph, []))

  defp walk(name, graph, stack) do
    if name in stack,
      do: Enum.reverse([name | stack]) |> Enum.drop_while(&(&1 != name)),
      else: Enum.find_value((graph[name] && graph[name].depends_on) || [], &walk(&1, graph, [name | stack]))
  end

  @doc "`:ok` or `{:error, reason}` for a task_input naming a missing task or output, or a task it does not depend on."
  def validate_artifacts(graph) do
    Enum.reduce_while(graph, :ok, fn {name, task}, :ok ->
      (task.task_inputs || [])
      |> Enum.find_value(fn %TaskInput{from_task: from, output: output} ->
        cond do
          not Map.has_key?(graph, from) ->
            {:source_task_not_found, name, from}

          not Map.has_key?(graph[from].outputs || %{}, output) ->
            {:output_not_found, name, from, output}

          not MapSet.member?(all_deps(name, graph, MapSet.new()), from) ->
            {:missing_task_dependency, name, from}

          true ->
            nil
        end
      end)
      |> case do
        nil -> {:cont, :ok}
        reason -> {:halt, {:error, reason}}
      end
    end)
  end

  defp all_deps(name, graph, seen) do
    if MapSet.member?(seen, name) do
      seen
    else
      deps = (graph[name] && graph[name].depends_on) || []

      deps
      |> Enum.reduce(MapSet.put(seen, name), fn dep, acc ->
        acc |> MapSet.put(dep) |> MapSet.union(all_deps(dep, graph, acc))
      end)
      |> MapSet.delete(name)
    end
  end

  defp map_ok(list, fun) do
    list
    |> Enum.reduce_while({:ok, []}, fn item, {:ok, acc} ->
      case fun.(item) do
        {:ok, value} -> {:cont, {:ok, [value | acc]}}
        {:error, _} = error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, values} -> {:ok, Enum.reverse(values)}
      error -> error
    end
  end
end
