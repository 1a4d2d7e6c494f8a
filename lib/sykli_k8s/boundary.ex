defmodule SykliK8s.Boundary do
  @moduledoc """
  What crosses between sykli's executor and this project's engine (`SykliK8s.Target`), as
  `../shared/SYKLI-CONTRACT.md` describes sykli's side:

    * sykli's `setup/1` keywords (a bare git context, `workdir: "."` as typed, the CLI
      `timeout` in ms, no namespace) plus `.sykli/config.exs` and the environment
      variables that stand for the flags sykli's CLI does not have, into a target state;
    * a `%Sykli.Graph.Task{}` (no Access; mounts `%{resource: "src:P", path:, type:}`
      resolved against sykli's workdir, since sykli never passes the pipeline's
      `resources`) into the pipeline task a Job is built from;
    * this project's outcomes into what sykli renders: `{:ok, logs}`, or `Sykli.Error`'s
      own constructors when sykli's error module is loaded.

  Progress goes to stderr: sykli discards stdout while it runs.
  """

  alias Sykli.GitContext
  alias SykliK8s.{Config, Error, Git, Source, Target}

  # sykli's modules, present when sykli is the host (they are compiled after this one).
  @compile {:no_warn_undefined, [Sykli.Error, Sykli.SuccessCriteria.Result]}

  # Environment variables standing for flags sykli's CLI does not have; they win over the
  # config file, as flags do. (SYKLI_K8S_NAMESPACE keeps sykli's meaning: a default the
  # config file overrides.)
  @env_flags [
    {"SYKLI_SOURCE_STRATEGY", :source_strategy},
    {"SYKLI_GIT_REF", :git_ref},
    {"SYKLI_K8S_CONTEXT", :context}
  ]

  @strategies %{"git_clone" => :git_clone, "git-clone" => :git_clone, "pvc" => :pvc, "s3" => :s3}

  # How much of a task's log a result carries (the tail; every line went to stderr live).
  @output_limit 1_048_576

  @doc "The environment variables read in place of flags, with the setting each sets."
  def env_flags, do: @env_flags

  @doc """
  The target state for sykli's `setup/1` keywords. Errors are printed on stderr too:
  sykli shows only "target setup failed".
  """
  @spec setup(keyword(), map()) :: {:ok, map()} | {:error, Error.t()}
  def setup(opts, env \\ System.get_env()) do
    opts = Map.new(opts)
    workdir = realpath(Path.expand(to_string(opts[:workdir] || ".")))

    result =
      with {:ok, ctx} <- context(opts[:git_context], workdir),
           {:ok, env_flags} <- flags_from_env(env),
           flags =
             Map.merge(
               env_flags,
               compact(%{
                 git_ssh_secret: opts[:git_ssh_secret],
                 git_token_secret: opts[:git_token_secret],
                 # What a sykli CLI with --git-ref / --source-strategy would pass.
                 git_ref: opts[:git_ref],
                 source_strategy: opts[:source_strategy]
               })
             ),
           {:ok, settings} <- Config.resolve(ctx.root, flags, env),
           {:ok, source} <-
             Source.prepare(ctx,
               strategy: settings.source_strategy,
               source_sync: settings[:source_sync],
               # sykli's CLI refused a dirty tree unless --allow-dirty: what reaches us is allowed.
               allow_dirty: true,
               git_ref: settings[:git_ref],
               unpushed: :refuse
             ),
           :ok <- warn(source.warnings),
           {:ok, engine} <-
             Target.setup(
               Map.to_list(Map.delete(flags, :git_ref)) ++
                 [
                   git_context: source.git_context,
                   workdir: ctx.root,
                   create_namespace: settings[:create_namespace] != false,
                   # Outputs sykli's later tasks read (task_inputs) leave with their Job.
                   collect_outputs: true
                 ]
             ),
           # Before the PVC upload or the first task: once, and in one line, not per task.
           :ok <- Target.ensure_namespace(engine),
           {:ok, engine} <- publish(engine) do
        {:ok,
         %{
           workdir: workdir,
           root: ctx.root,
           namespace: engine.namespace,
           artifact_pvc: engine[:artifact_pvc],
           git_context: source.git_context,
           git_ssh_secret: engine[:git_ssh_secret],
           git_token_secret: engine[:git_token_secret],
           run_id: engine.run_id,
           engine: engine,
           task_timeout: task_timeout(opts[:timeout]),
           attempts: :ets.new(:sykli_k8s_attempts, [:public, :set, write_concurrency: true]),
           description: source.description
         }}
      end

    case result do
      {:ok, state} ->
        say("run #{state.run_id}: #{state.description}, namespace #{state.namespace}")
        {:ok, state}

      {:error, %Error{message: message}} = error ->
        say(message)
        error
    end
  end

  # sykli hands over the context its own detect/1 answered (ours: a struct with the
  # repository root), or a plain map from elsewhere: then it is detected again here.
  defp context(%GitContext{root: root} = ctx, _workdir) when is_binary(root), do: {:ok, ctx}

  defp context(other, workdir) do
    with {:ok, ctx} <- Git.detect(workdir) do
      dirty = if is_map(other), do: Map.get(other, :dirty, ctx.dirty), else: ctx.dirty
      {:ok, %{ctx | dirty: dirty}}
    end
  end

  defp flags_from_env(env) do
    Enum.reduce_while(@env_flags, {:ok, %{}}, fn {var, key}, {:ok, acc} ->
      case {key, env[var]} do
        {_, nil} ->
          {:cont, {:ok, acc}}

        {_, ""} ->
          {:cont, {:ok, acc}}

        {:source_strategy, value} ->
          case @strategies[value] do
            nil ->
              {:halt,
               {:error,
                %Error{
                  kind: :invalid_option,
                  message: "#{var} is #{inspect(value)}, but must be git_clone, pvc or s3"
                }}}

            strategy ->
              {:cont, {:ok, Map.put(acc, key, strategy)}}
          end

        {_, value} ->
          {:cont, {:ok, Map.put(acc, key, value)}}
      end
    end)
  end

  # The PVC and S3 strategies put the working tree where Jobs read it, once, before any task.
  defp publish(%{source_strategy: :pvc} = engine) do
    with {:ok, engine, u} <- Target.upload_source(engine) do
      if u.existed,
        do: say("tree #{String.slice(u.tree, 0, 12)} is already on claim #{engine.source_pvc}"),
        else:
          say(
            "uploaded #{u.files_sent} of #{u.files} files (#{u.bytes_sent} bytes) into claim #{engine.source_pvc}"
          )

      {:ok, engine}
    end
  end

  # Each Job's URL is signed when its task is submitted, for that task's own timeout.
  defp publish(%{source_strategy: :s3} = engine) do
    with {:ok, engine, p} <- Target.publish_source(engine) do
      warn(p.warnings)

      say(
        if p.existed,
          do: "#{p.object} already holds the tree",
          else: "uploaded #{p.size} bytes to #{p.object}"
      )

      {:ok, engine}
    end
  end

  defp publish(engine), do: {:ok, engine}

  defp task_timeout(ms) when is_integer(ms) and ms > 0, do: max(div(ms + 999, 1000), 1)
  defp task_timeout(_), do: nil

  @doc "Deletes what setup made for the run (the attempt counters)."
  def teardown(%{attempts: table}) do
    if :ets.info(table) != :undefined, do: :ets.delete(table)
    :ok
  end

  def teardown(_state), do: :ok

  @doc """
  Runs a `%Sykli.Graph.Task{}` as a Job (a fresh Job for every attempt of a retried task)
  and waits for it. `{:ok, logs}` on success; on failure sykli's own error (the task's
  logs, its exit code, the one-line reason) when `Sykli.Error` is loaded, else
  `%SykliK8s.Error{}`.
  """
  @spec run_task(struct() | map(), map(), keyword()) :: {:ok, String.t()} | {:error, term()}
  def run_task(task, state, run_opts) do
    started = System.monotonic_time(:millisecond)
    name = field(task, :name)
    attempt = :ets.update_counter(state.attempts, {:attempt, name}, 1, {{:attempt, name}, 0})
    timeout = field(task, :timeout) || state.task_timeout

    with {:ok, pipeline_task, resources} <- pipeline_task(task, state, timeout),
         {:ok, run} <-
           Target.start_task(pipeline_task, state.engine, resources: resources, attempt: attempt) do
      say("▶ #{name}#{progress(run_opts)} started (Job #{state.namespace}/#{run.job}#{retry_note(attempt)})")
      {result, log} = Target.await_fold(run, new_log(), &on_event(name, &1, &2))
      finished(result, task, pipeline_task, state, run, log_text(log), started, timeout)
    else
      {:error, %Error{} = e} -> failed(task, e, "", started, timeout)
    end
  end

  defp progress(run_opts) do
    case Keyword.get(run_opts, :progress) do
      {n, total} -> " [#{n}/#{total}]"
      _ -> ""
    end
  end

  defp retry_note(1), do: ""
  defp retry_note(n), do: ", attempt #{n}"

  defp on_event(name, {:log, "task", line}, log) do
    say("[#{name}] #{line}")
    add_line(log, line)
  end

  defp on_event(name, {:log, container, line}, log) do
    say("[#{name}:#{container}] #{line}")
    add_line(log, "[#{container}] #{line}")
  end

  defp on_event(_name, _event, log), do: log

  defp finished({:ok, outcome}, task, pipeline_task, state, run, output, started, timeout) do
    # The task as its Job was built: its outputs already resolved in the repository.
    case Target.finish_task(state.engine, pipeline_task, run.job, outcome[:namespace], true) do
      {:ok, _} ->
        record_outputs(task, state, run.job)
        say("✓ #{field(task, :name)} succeeded in #{seconds(started)}")
        {:ok, output}

      {:error, %Error{} = e} ->
        failed(
          task,
          %{e | message: "its outputs could not be copied back: " <> e.message},
          output,
          started,
          timeout
        )
    end
  end

  defp finished({:error, %Error{} = e}, task, pipeline_task, state, run, output, started, timeout) do
    _ = Target.finish_task(state.engine, pipeline_task, run.job, namespace(e), false)
    failed(task, e, output, started, timeout)
  end

  defp namespace(%Error{details: details}) when is_map(details), do: details[:namespace]
  defp namespace(_), do: nil

  defp failed(task, %Error{} = e, output, started, timeout) do
    name = field(task, :name)
    say("✗ #{name} failed after #{seconds(started)}: #{e.message}")
    duration = System.monotonic_time(:millisecond) - started
    exit_code = if is_map(e.details), do: e.details[:exit_code]
    # sykli shows a failed task's output when there is any, else the message: the reason
    # ends the output, so it shows either way.
    output = output <> "sykli k8s: " <> e.message <> "\n"
    {:error, host_error(task, e, exit_code, output, duration, timeout)}
  end

  defp host_error(task, e, exit_code, output, duration, timeout) do
    name = field(task, :name)
    command = field(task, :command)

    if sykli_error?() do
      base =
        if e.kind in [:timeout, :deadline_exceeded] and is_integer(timeout) do
          %{Sykli.Error.task_timeout(name, command, timeout * 1000) | output: output}
        else
          error = Sykli.Error.task_failed(name, command, exit_code, output, duration_ms: duration)

          if e.kind == :task_failed,
            do: error,
            else: %{error | message: "task '#{name}' failed: #{e.message}"}
        end

      %{base | notes: List.wrap(base.notes) ++ [e.message], cause: e}
    else
      %{e | details: Map.merge(details(e), %{exit_code: exit_code, output: output, duration_ms: duration})}
    end
  end

  defp details(%Error{details: d}) when is_map(d), do: d
  defp details(_), do: %{}

  defp sykli_error? do
    Code.ensure_loaded?(Sykli.Error) and function_exported?(Sykli.Error, :task_failed, 5)
  end

  # The task as the pipeline JSON has it, and the resources its mounts name: `src:P` is the
  # directory P of sykli's workdir (as sykli's local target resolves it), which must lie in
  # the repository; a cache mount names its cache.
  defp pipeline_task(task, state, timeout) do
    with {:ok, mounts, resources} <- mounts(field(task, :mounts) || [], state),
         {:ok, outputs} <- outputs(task, state),
         {:ok, inputs} <- artifact_inputs(task, state) do
      {:ok,
       compact(%{
         "name" => field(task, :name),
         "command" => field(task, :command),
         "container" => field(task, :container),
         "workdir" => field(task, :workdir),
         "env" => field(task, :env) || %{},
         "mounts" => mounts,
         "services" =>
           Enum.map(
             field(task, :services) || [],
             &%{"image" => field(&1, :image), "name" => field(&1, :name)}
           ),
         "timeout" => timeout,
         "outputs" => if(outputs != [], do: outputs),
         "artifact_inputs" => if(inputs != [], do: inputs),
         "k8s" => plain(field(task, :k8s))
       }), resources}
    end
  end

  defp mounts(mounts, state) do
    Enum.reduce_while(mounts, {:ok, [], %{}}, fn mount, {:ok, acc, resources} ->
      resource = to_string(field(mount, :resource))
      path = field(mount, :path)

      case {to_string(field(mount, :type) || "directory"), resource} do
        {"directory", "src:" <> dir} ->
          case repo_path(dir, state) do
            {:ok, rel} ->
              {:cont,
               {:ok, acc ++ [%{"resource" => resource, "path" => path, "type" => "directory"}],
                Map.put(resources, resource, %{"type" => "directory", "path" => rel})}}

            {:error, why} ->
              {:halt, {:error, invalid_mount(resource, path, why)}}
          end

        {"cache", name} ->
          {:cont,
           {:ok, acc ++ [%{"resource" => name, "path" => path, "type" => "cache"}],
            Map.put(resources, name, %{"type" => "cache", "name" => name})}}

        {"directory", _} ->
          {:halt, {:error, invalid_mount(resource, path, "a directory mount names src:<path>")}}

        {type, _} ->
          {:halt,
           {:error, invalid_mount(resource, path, "type #{inspect(type)} is neither directory nor cache")}}
      end
    end)
  end

  defp invalid_mount(resource, path, why),
    do: %Error{kind: :invalid_task, message: "mount #{inspect(resource)} at #{inspect(path)}: #{why}"}

  # Declared outputs, as paths of the repository (sykli resolves them against its workdir).
  defp outputs(task, state) do
    paths =
      case field(task, :outputs) do
        map when is_map(map) -> map |> Enum.sort() |> Enum.map(&elem(&1, 1))
        list when is_list(list) -> list
        _ -> []
      end

    Enum.reduce_while(paths, {:ok, []}, fn path, {:ok, acc} ->
      case repo_path(to_string(path), state) do
        {:ok, "."} ->
          {:halt,
           {:error, %Error{kind: :invalid_task, message: "output #{inspect(path)} is the whole repository"}}}

        {:ok, rel} ->
          {:cont, {:ok, acc ++ [rel]}}

        {:error, why} ->
          {:halt, {:error, %Error{kind: :invalid_task, message: "output #{inspect(path)}: #{why}"}}}
      end
    end)
  end

  @doc """
  `path` (relative to sykli's workdir, or absolute) as a path of the repository (`"."`
  for its root), or why it cannot be one.
  """
  @spec repo_path(String.t(), map()) :: {:ok, String.t()} | {:error, String.t()}
  def repo_path(path, %{workdir: workdir, root: root}) do
    full = realpath(Path.expand(path, workdir))

    cond do
      full == root -> {:ok, "."}
      String.starts_with?(full, root <> "/") -> {:ok, String.replace_prefix(full, root <> "/", "")}
      true -> {:error, "#{full} is outside the repository #{root}: a Job sees only the repository's files"}
    end
  end

  # Symlinks resolved, as git reports the repository root.
  defp realpath(path, depth \\ 0) do
    path
    |> Path.split()
    |> Enum.reduce("/", fn part, acc ->
      next = Path.join(acc, part)

      case File.read_link(next) do
        {:ok, target} when depth < 40 -> realpath(Path.expand(target, acc), depth + 1)
        _ -> next
      end
    end)
  end

  # A succeeded task's outputs, for the tasks that read them (`task_inputs`): which Job's
  # directory on the artifact claim holds each.
  defp record_outputs(task, state, job) do
    outputs = field(task, :outputs)

    if is_map(outputs) do
      for {name, path} <- outputs, {:ok, rel} <- [repo_path(to_string(path), state)] do
        :ets.insert(state.attempts, [
          {{:output, rel}, job},
          {{:output, field(task, :name), to_string(name)}, {job, rel}}
        ])
      end
    end

    :ok
  end

  @doc """
  `copy_artifact/4`. Paths below `/artifacts/` (from `artifact_path/4`) are copied on the
  artifact claim in the cluster. The relative paths sykli's artifact resolver passes (the
  producer's declared output, the consumer's `dest`, both against sykli's workdir) name
  an output a task of this run produced: the consumer's Job places it at `dest` from the
  producer's directory on the claim, so here it is only checked.
  """
  @spec copy_artifact(String.t(), String.t(), String.t(), map()) :: :ok | {:error, Error.t()}
  def copy_artifact("/artifacts/" <> _ = source, dest, workdir, state),
    do: Target.copy_artifact(source, dest, workdir, state.engine)

  def copy_artifact(source, dest, _workdir, state) do
    with {:ok, src} <- artifact_repo_path(source, state),
         {:ok, _dest} <- artifact_repo_path(dest, state) do
      case :ets.lookup(state.attempts, {:output, src}) do
        [{_, _job}] ->
          :ok

        [] ->
          {:error,
           %Error{
             kind: :not_found,
             message:
               "no task of this run has produced #{inspect(source)} (#{src} of the repository): " <>
                 "the producing task declares it in its outputs and succeeds first"
           }}
      end
    end
  end

  defp artifact_repo_path(path, state) do
    case repo_path(to_string(path), state) do
      {:ok, "."} ->
        {:error,
         %Error{kind: :invalid_option, message: "artifact path #{inspect(path)} is the whole repository"}}

      {:ok, rel} ->
        {:ok, rel}

      {:error, why} ->
        {:error, %Error{kind: :invalid_option, message: "artifact path #{inspect(path)}: #{why}"}}
    end
  end

  # What a task reads from the tasks before it: each `task_inputs` entry as the producer's
  # Job directory on the claim, the path there, and where it goes in this task's workspace.
  defp artifact_inputs(task, state) do
    Enum.reduce_while(field(task, :task_inputs) || [], {:ok, []}, fn input, {:ok, acc} ->
      from = to_string(field(input, :from_task))
      output = to_string(field(input, :output))

      with [{_, {job, rel}}] <- :ets.lookup(state.attempts, {:output, from, output}),
           {:ok, dest} <- artifact_repo_path(to_string(field(input, :dest)), state) do
        {:cont, {:ok, acc ++ [%{"job" => job, "path" => rel, "to" => dest}]}}
      else
        {:error, _} = error ->
          {:halt, error}

        [] ->
          {:halt,
           {:error,
            %Error{
              kind: :not_found,
              message:
                "task input #{inspect(output)} of #{inspect(from)}: that task has not produced it in this run"
            }}}
      end
    end)
  end

  @doc "`resolve_secret/2`: the cluster's Secret, else the environment variable named `ref`."
  @spec resolve_secret(String.t(), map(), map()) :: {:ok, String.t()} | {:error, :not_found}
  def resolve_secret(ref, state, env \\ System.get_env()) do
    from_cluster =
      case state do
        %{engine: %{cluster: cluster} = engine} when cluster != nil -> Target.resolve_secret(ref, engine)
        _ -> {:error, :not_connected}
      end

    case {from_cluster, env[ref]} do
      {{:ok, value}, _} -> {:ok, value}
      {_, value} when is_binary(value) and value != "" -> {:ok, value}
      _ -> {:error, :not_found}
    end
  end

  @doc """
  `create_volume/3`: the claim `sykli-cache-NAME` (type `:cache`) or `sykli-dir-NAME`,
  created ReadWriteOnce unless it exists.
  """
  @spec create_volume(String.t(), map(), map()) :: {:ok, map()} | {:error, Error.t()}
  def create_volume(name, opts, state) do
    opts = Map.new(opts || %{})
    prefix = if opts[:type] in [:cache, "cache"], do: "sykli-cache-", else: "sykli-dir-"
    claim = prefix <> slug(to_string(name))

    volume = %{
      size: opts[:size] || "1Gi",
      storage_class: opts[:storage_class],
      type: opts[:access_mode] || "ReadWriteOnce"
    }

    with {:ok, _} <- Target.create_volume(claim, volume, state.engine) do
      {:ok, %{id: claim, host_path: nil, reference: "pvc:" <> claim}}
    end
  end

  defp slug(name) do
    name
    |> String.downcase()
    |> String.replace(~r/[^a-z0-9-]+/, "-")
    |> String.trim("-")
    |> String.slice(0, 50)
    |> String.trim("-")
  end

  @doc """
  `evaluate_success_criteria/4`: `exit_code` criteria against the task's exit code; a
  file criterion is answered unsupported (the files stay in the pod), criterion by
  criterion. Answers in sykli's shapes (`Sykli.SuccessCriteria.Result`, and
  `Sykli.Error.success_criteria_failed/3` or `unsupported_success_criteria_for_target/4`).
  """
  def evaluate_success_criteria(task, criteria, _state, run_opts) do
    exit_code = Keyword.get(run_opts, :command_exit_code, 0)
    results = criteria |> Enum.with_index() |> Enum.map(fn {c, i} -> criterion(c, i, exit_code) end)
    name = field(task, :name)

    opts = [
      command: field(task, :command),
      output: run_opts[:command_output],
      duration_ms: run_opts[:duration_ms]
    ]

    cond do
      Enum.all?(results, &(&1.status == :passed)) ->
        {:ok, results}

      Enum.any?(results, &(&1.status == :failed)) ->
        {:error, Sykli.Error.success_criteria_failed(name, results, opts), results}

      true ->
        {:error, Sykli.Error.unsupported_success_criteria_for_target(name, "k8s", results, opts), results}
    end
  end

  defp criterion(%{"type" => "exit_code"} = c, index, exit_code) do
    expected = c["equals"]

    if expected == exit_code,
      do: result(c, index, :passed, "exit code #{exit_code}"),
      else: result(c, index, :failed, "exit code #{exit_code}, expected #{inspect(expected)}")
  end

  defp criterion(c, index, _exit_code) do
    result(
      c,
      index,
      :unsupported,
      "#{c["type"]} is not evaluated on Kubernetes: the task's files stay in its pod"
    )
  end

  defp result(criterion, index, status, message) do
    struct(Sykli.SuccessCriteria.Result,
      index: index,
      type: Map.get(criterion, "type", "unknown"),
      status: status,
      message: message,
      evidence: criterion,
      target: "k8s"
    )
  end

  # Structs (sykli's K8sOptions and its nested ones, TaskInput…) as plain maps with string
  # keys, nils left out, as the pipeline JSON has them.
  defp plain(%_{} = struct), do: struct |> Map.from_struct() |> plain()

  defp plain(map) when is_map(map) do
    for {k, v} <- map, v != nil, into: %{}, do: {to_string(k), plain(v)}
  end

  defp plain(list) when is_list(list), do: Enum.map(list, &plain/1)
  defp plain(other), do: other

  # A field of sykli's struct, or of a map with atom or string keys.
  defp field(%{} = data, key) do
    case Map.fetch(data, key) do
      {:ok, value} -> value
      :error -> Map.get(data, to_string(key))
    end
  end

  defp new_log, do: {:queue.new(), 0}

  defp add_line({q, size}, line) do
    line = line <> "\n"
    trim({:queue.in(line, q), size + byte_size(line)})
  end

  defp trim({q, size}) when size > @output_limit do
    {{:value, old}, q} = :queue.out(q)
    trim({q, size - byte_size(old)})
  end

  defp trim(log), do: log

  defp log_text({q, _size}), do: q |> :queue.to_list() |> IO.iodata_to_binary()

  defp seconds(started), do: "#{Float.round((System.monotonic_time(:millisecond) - started) / 1000, 1)} s"

  defp warn(warnings) do
    Enum.each(warnings, &say("warning: " <> &1))
    :ok
  end

  defp say(line), do: IO.puts(:stderr, "sykli k8s: " <> line)

  defp compact(map), do: for({k, v} <- map, v != nil, into: %{}, do: {k, v})
end
