defmodule Sykli.Error do
  @moduledoc """
  Test double of sykli's `Sykli.Error` (core/lib/sykli/error.ex at 797c36a): the same
  exception fields and the constructors a target and the executor use, producing the same
  codes, types, steps, messages, hints and notes. Only the harness defines it; it is never
  compiled into the library.
  """

  defexception [
    :code,
    :type,
    :message,
    :task,
    :step,
    :command,
    :output,
    :exit_code,
    :duration_ms,
    :cause,
    hints: [],
    notes: [],
    locations: []
  ]

  @type t :: %__MODULE__{}

  @issues "report this issue at https://github.com/yairfalse/sykli/issues"

  @impl true
  def message(%__MODULE__{code: code, message: msg}), do: "[#{code}] #{msg}"

  # ── execution ────────────────────────────────────────────────────────────────

  def task_failed(task, command, exit_code, output, opts \\ []) do
    duration_ms = Keyword.get(opts, :duration_ms)

    %__MODULE__{
      code: "task_failed",
      type: :execution,
      message: "task '#{task}' failed",
      task: task,
      step: :run,
      command: command,
      output: output,
      exit_code: exit_code,
      duration_ms: duration_ms,
      hints: generate_hints(exit_code, output),
      notes: duration_note(duration_ms),
      locations: parse_locations(output || "")
    }
  end

  def task_timeout(task, command, timeout_ms) do
    %__MODULE__{
      code: "task_timeout",
      type: :execution,
      message: "task '#{task}' timed out after #{format_duration(timeout_ms)}",
      task: task,
      step: :run,
      command: command,
      duration_ms: timeout_ms,
      hints: [
        "increase the timeout with --timeout=<duration>",
        "check for infinite loops or blocking operations"
      ],
      notes: []
    }
  end

  def success_criteria_failed(task, results, opts \\ []) do
    %__MODULE__{
      code: "success_criteria_failed",
      type: :execution,
      message: "task '#{task}' failed success_criteria",
      task: task,
      step: :run,
      command: Keyword.get(opts, :command),
      output: Keyword.get(opts, :output),
      duration_ms: Keyword.get(opts, :duration_ms),
      hints: ["inspect the failed success_criteria and update the task command or contract"],
      notes: criterion_notes(Sykli.SuccessCriteria.failures(results))
    }
  end

  def unsupported_success_criteria_for_target(task, target_name, results, opts \\ []) do
    %__MODULE__{
      code: "unsupported_success_criteria_for_target",
      type: :execution,
      message: "target '#{target_name}' does not support success_criteria evaluation for task '#{task}'",
      task: task,
      step: :run,
      command: Keyword.get(opts, :command),
      output: Keyword.get(opts, :output),
      duration_ms: Keyword.get(opts, :duration_ms),
      hints: [
        "run this task on a target that can evaluate the declared success_criteria",
        "or remove success_criteria that this target cannot evaluate"
      ],
      notes: criterion_notes(results)
    }
  end

  def missing_secrets(task, secrets) when is_list(secrets) do
    names = Enum.join(secrets, ", ")

    %__MODULE__{
      code: "missing_secrets",
      type: :execution,
      message: "task '#{task}' requires secrets: #{names}",
      task: task,
      step: :run,
      hints: ["set environment variables: #{names}", "or use a .env file in the project root"],
      notes: []
    }
  end

  # ── validation ───────────────────────────────────────────────────────────────

  def cycle_detected(path) when is_list(path) do
    %__MODULE__{
      code: "dependency_cycle",
      type: :validation,
      message: "dependency cycle detected",
      step: :validate,
      hints: [
        "remove one of the dependencies in the cycle",
        "or restructure tasks to break the circular dependency"
      ],
      notes: ["cycle: #{Enum.join(path, " → ")}"]
    }
  end

  def invalid_service(field, service_name \\ nil) do
    hint =
      case field do
        :image -> "add .Image(\"redis:7\") to specify the container image"
        :name -> "add .Name(\"redis\") to specify the service name"
        _ -> "check the service configuration"
      end

    context = if service_name, do: " for service '#{service_name}'", else: ""

    %__MODULE__{
      code: "invalid_service",
      type: :validation,
      message: "service #{field} cannot be empty#{context}",
      step: :parse,
      hints: [hint],
      notes: []
    }
  end

  def invalid_mount(field, details \\ nil) do
    hint =
      case field do
        :resource -> "specify the resource name (e.g., s.Dir(\".\") or s.Cache(\"npm\"))"
        :path -> "specify the mount path inside the container"
        :type -> "mount type must be 'directory' or 'cache'"
        _ -> "check the mount configuration"
      end

    %__MODULE__{
      code: "invalid_mount",
      type: :validation,
      message: "mount #{field} is invalid",
      step: :parse,
      hints: [hint],
      notes: if(details, do: [details], else: [])
    }
  end

  def artifact_error(reason) do
    {message, hints} =
      case reason do
        {:source_task_not_found, task, source} ->
          {"task '#{task}' requires artifact from '#{source}', but '#{source}' doesn't exist",
           ["check the task name in .Input(\"#{source}\", ...)"]}

        {:output_not_found, task, source, output} ->
          {"task '#{task}' requires output '#{output}' from '#{source}'",
           ["add .Output(\"#{output}\", \"path/...\") to task '#{source}'"]}

        {:missing_task_dependency, task, source} ->
          {"task '#{task}' uses artifact from '#{source}' but doesn't depend on it",
           ["add .After(\"#{source}\") to ensure '#{source}' runs first"]}

        _ ->
          {"artifact validation failed", ["check artifact configuration"]}
      end

    %__MODULE__{
      code: "missing_artifact",
      type: :validation,
      message: message,
      step: :validate,
      hints: hints,
      notes: []
    }
  end

  def invalid_json(details \\ nil) do
    %__MODULE__{
      code: "invalid_json",
      type: :sdk,
      message: "SDK produced invalid JSON",
      step: :parse,
      hints: [
        "ensure your sykli file calls .Emit() at the end",
        "check for print/log statements that might corrupt output"
      ],
      notes: if(details, do: [details], else: [])
    }
  end

  # ── runtime ──────────────────────────────────────────────────────────────────

  def k8s_connection_failed(reason \\ nil) do
    %__MODULE__{
      code: "cluster_unreachable",
      type: :runtime,
      message: "failed to connect to Kubernetes cluster",
      step: :setup,
      hints: [
        "check your kubeconfig: kubectl cluster-info",
        "ensure you have the correct context selected"
      ],
      notes: if(reason, do: [inspect(reason)], else: [])
    }
  end

  def k8s_resource_failed(resource_type, name, reason) do
    %__MODULE__{
      code: "resource_failed",
      type: :runtime,
      message: "failed to create #{resource_type} '#{name}'",
      step: :setup,
      hints: [
        "check cluster permissions for creating #{resource_type}",
        "verify the resource configuration"
      ],
      notes: [inspect(reason)],
      cause: reason
    }
  end

  def not_a_git_repo(path \\ ".") do
    %__MODULE__{
      code: "not_a_git_repo",
      type: :runtime,
      message: "not a git repository",
      step: :setup,
      hints: [
        "initialize a git repository: git init",
        "K8s execution requires git to clone source code"
      ],
      notes: ["path: #{Path.expand(path)}"]
    }
  end

  def dirty_workdir do
    %__MODULE__{
      code: "uncommitted_changes",
      type: :runtime,
      message: "uncommitted changes in working directory",
      step: :setup,
      hints: [
        "commit your changes: git add . && git commit -m '...'",
        "or use --allow-dirty to proceed anyway (not recommended)"
      ],
      notes: ["K8s execution requires a clean git state for reproducibility"]
    }
  end

  # ── internal ─────────────────────────────────────────────────────────────────

  def internal(message, opts \\ []) do
    notes =
      case Keyword.get(opts, :stacktrace) do
        nil ->
          []

        stacktrace ->
          frames = stacktrace |> Enum.take(3) |> Enum.map(&Exception.format_stacktrace_entry/1)
          ["First few stack frames: " <> Enum.join(frames, " → ")]
      end

    %__MODULE__{
      code: "internal_error",
      type: :internal,
      message: message,
      hints: [@issues],
      notes: notes,
      cause: Keyword.get(opts, :cause)
    }
  end

  @doc "Legacy reasons to errors, as upstream's `wrap/1` (the SDK-emission clauses left out)."
  def wrap(%__MODULE__{} = e), do: e
  def wrap({:cycle_detected, path}), do: cycle_detected(path)
  def wrap(:invalid_format), do: invalid_json("expected {\"tasks\": [...]} format")
  def wrap({:json_parse_error, reason}), do: invalid_json(inspect(reason))
  def wrap({:artifact_validation_failed, reason}), do: artifact_error(reason)
  def wrap({:source_task_not_found, _, _} = r), do: artifact_error(r)
  def wrap({:output_not_found, _, _, _} = r), do: artifact_error(r)
  def wrap({:missing_task_dependency, _, _} = r), do: artifact_error(r)
  def wrap(:not_a_git_repo), do: not_a_git_repo()
  def wrap(:dirty_workdir), do: dirty_workdir()

  def wrap({:target_setup_failed, reason}),
    do: internal("target setup failed: #{inspect(reason)}", cause: reason)

  def wrap({:missing_secrets, secrets}), do: missing_secrets("unknown", secrets)
  def wrap(reason) when is_atom(reason), do: internal("unexpected error: #{reason}")
  def wrap(reason) when is_binary(reason), do: internal(reason)
  def wrap(reason), do: internal("unexpected error: #{inspect(reason)}", cause: reason)

  def from_exception(%__MODULE__{} = e, _stacktrace), do: e

  def from_exception(exception, stacktrace),
    do: internal(Exception.message(exception), cause: exception, stacktrace: stacktrace)

  def from_exit(:normal), do: internal("process exited normally (unexpected)")
  def from_exit(:shutdown), do: internal("process was shut down")
  def from_exit({:shutdown, _}), do: internal("process was shut down")
  def from_exit(reason), do: internal("process exited: #{inspect(reason)}", cause: reason)

  def add_hint(%__MODULE__{hints: hints} = e, hint), do: %{e | hints: hints ++ [hint]}
  def add_hints(%__MODULE__{hints: hints} = e, more), do: %{e | hints: hints ++ more}
  def add_note(%__MODULE__{notes: notes} = e, note), do: %{e | notes: notes ++ [note]}
  def with_task(%__MODULE__{} = e, task), do: %{e | task: task}

  # ── helpers ──────────────────────────────────────────────────────────────────

  defp criterion_notes(results) do
    Enum.map(results, fn r ->
      details =
        case format_evidence(r.evidence) do
          "" -> ""
          evidence -> " (#{evidence})"
        end

      "success_criteria[#{r.index}] #{r.type}: #{r.status} - #{r.message}#{details}"
    end)
  end

  defp format_evidence(nil), do: ""

  defp format_evidence(evidence) when is_map(evidence),
    do: Enum.map_join(evidence, ", ", fn {k, v} -> "#{k}=#{inspect(v)}" end)

  defp format_evidence(evidence), do: inspect(evidence)

  defp generate_hints(exit_code, output),
    do: [exit_code_hint(exit_code), output_hint(output)] |> Enum.reject(&is_nil/1) |> Enum.uniq()

  defp exit_code_hint(2), do: "command misuse - check arguments"
  defp exit_code_hint(126), do: "not executable - try: chmod +x <script>"
  defp exit_code_hint(127), do: "command not found - check PATH or install missing tool"
  defp exit_code_hint(128), do: "invalid exit code"
  defp exit_code_hint(137), do: "process killed (SIGKILL) - likely out of memory"
  defp exit_code_hint(143), do: "process terminated (SIGTERM) - task was cancelled"

  defp exit_code_hint(code) when is_integer(code) and code > 128 and code < 256,
    do: "process killed by signal #{code - 128}"

  defp exit_code_hint(_), do: nil

  @output_patterns [
    {~r/command not found/i, "install the missing command or check your PATH"},
    {~r/permission denied/i, "check file permissions - try: chmod +x <file>"},
    {~r/no such file or directory/i, "file or directory doesn't exist - check the path"},
    {~r/connection refused/i, "service not running - start the service or check the port"},
    {~r/timeout|timed out/i, "operation timed out - increase timeout or check network"},
    {~r/Unable to find image/i, "docker image not found - run: docker pull <image>"},
    {~r/Cannot connect to the Docker daemon/i, "Docker not running - start Docker"},
    {~r/cannot find module providing package/i, "missing Go module - try: go mod tidy"},
    {~r/Cannot find module/i, "missing npm module - try: npm install"},
    {~r/ModuleNotFoundError/i, "missing Python module - try: pip install <module>"},
    {~r/out of memory/i, "out of memory - reduce parallelism or increase memory"}
  ]

  defp output_hint(output) when is_binary(output),
    do: Enum.find_value(@output_patterns, fn {re, hint} -> if Regex.match?(re, output), do: hint end)

  defp output_hint(_), do: nil

  # A reduced Sykli.ErrorParser.parse/1: `file.ext:line[:col]: message`, rust `--> f:l:c` and
  # python `File "f", line N`, at most 5, unique by file and line.
  defp parse_locations(output) when is_binary(output) do
    output
    |> String.split("\n")
    |> Enum.flat_map(fn line -> List.wrap(location(String.trim(line))) end)
    |> Enum.uniq_by(&{&1.file, &1.line})
    |> Enum.take(5)
  end

  defp parse_locations(_), do: []

  defp location(line) do
    cond do
      m = Regex.run(~r/^\s*--> (.+?):(\d+):(\d+)/, line) ->
        [_, f, l, c] = m
        loc(f, l, c, nil)

      m = Regex.run(~r/File "([^"]+)", line (\d+)/, line) ->
        [_, f, l] = m
        loc(f, l, nil, nil)

      (m = Regex.run(~r/^(.+?):(\d+):(\d+):\s*(.+)/, line)) && file?(Enum.at(m, 1)) ->
        [_, f, l, c, msg] = m
        loc(f, l, c, String.trim(msg))

      (m = Regex.run(~r/^(.+?):(\d+):\s+(.+)/, line)) && file?(Enum.at(m, 1)) ->
        [_, f, l, msg] = m
        loc(f, l, nil, String.trim(msg))

      true ->
        nil
    end
  end

  defp loc(file, line, col, msg),
    do: %{file: file, line: String.to_integer(line), column: col && String.to_integer(col), message: msg}

  defp file?(path), do: not String.starts_with?(path, "http") and Regex.match?(~r/\.[a-zA-Z]{1,10}$/, path)

  defp duration_note(nil), do: []
  defp duration_note(ms), do: ["task ran for #{format_duration(ms)} before failing"]

  @doc false
  def format_duration(ms) when ms < 1000, do: "#{ms}ms"
  def format_duration(ms) when ms < 60_000, do: "#{Float.round(ms / 1000, 1)}s"
  def format_duration(ms), do: "#{Float.round(ms / 60_000, 1)}m"
end

defmodule Sykli.Error.Formatter do
  @moduledoc """
  Test double of sykli's `Sykli.Error.Formatter` (core/lib/sykli/error/formatter.ex): the
  boxed `format/2` the CLI prints for an error (header `error[code]: message`, task, step,
  exit code, command, the last `max_output_lines` (10) lines of output, `help:` hints,
  `note:` notes) and the unboxed `format_simple/2`. Options: `no_color`, `compact`,
  `max_output_lines`. Colours are on by default, as upstream.
  """

  alias Sykli.Error

  @width 60

  def format(%Error{} = error, opts \\ []) do
    c = colors(Keyword.get(opts, :no_color, false))

    if Keyword.get(opts, :compact, false) do
      "#{c.red}error[#{error.code}]#{c.reset}: #{error.message} #{c.faint}(run with --verbose for details)#{c.reset}"
    else
      boxed(error, c, Keyword.get(opts, :max_output_lines, 10))
    end
  end

  def format_simple(%Error{} = error, opts \\ []) do
    c = colors(Keyword.get(opts, :no_color, false))
    max = Keyword.get(opts, :max_output_lines, 10)

    context =
      [error.task && "task: #{error.task}", error.exit_code && "exit code: #{error.exit_code}"]
      |> Enum.reject(&is_nil/1)

    [
      ["#{c.red}error[#{error.code}]#{c.reset}: #{error.message}"],
      if(context != [], do: ["  #{c.cyan}-->#{c.reset} #{Enum.join(context, ", ")}"], else: []),
      if(error.command, do: ["", "  #{c.faint}$#{c.reset} #{error.command}"], else: []),
      case tail(error.output, max) do
        [] -> []
        lines -> ["" | Enum.map(lines, &"  #{c.faint}│#{c.reset} #{&1}")]
      end,
      Enum.flat_map(error.hints || [], &["", "  #{c.faint}=#{c.reset} #{c.yellow}help#{c.reset}: #{&1}"]),
      Enum.map(error.notes || [], &"  #{c.faint}= note#{c.reset}: #{&1}")
    ]
    |> Enum.concat()
    |> Enum.join("\n")
  end

  defp boxed(error, c, max) do
    rule = "  " <> String.duplicate("─", @width - 6)

    output =
      case tail(error.output, max) do
        [] -> []
        lines -> [rule | Enum.map(lines, &"  #{c.faint}│#{c.reset} #{&1}")] ++ [rule, ""]
      end

    body =
      [
        [""],
        if(error.task, do: ["  Task: #{error.task}"], else: []),
        if(error.step, do: ["  Step: #{error.step}"], else: []),
        if(error.task || error.step, do: [""], else: []),
        if(error.exit_code, do: ["  Command exited with code #{error.exit_code}:", ""], else: []),
        if(error.command, do: ["    #{c.cyan}→ #{error.command}#{c.reset}", ""], else: []),
        output,
        Enum.map(error.hints || [], &"  #{c.yellow}help#{c.reset}: #{&1}"),
        Enum.map(error.notes || [], &"  #{c.faint}note#{c.reset}: #{&1}"),
        [""]
      ]
      |> Enum.concat()
      |> Enum.map(&row(&1, c))

    title = "error[#{error.code}]: #{error.message}"
    title = if String.length(title) > @width - 6, do: String.slice(title, 0, @width - 9) <> "...", else: title

    header =
      "#{c.faint}╭─#{c.reset} #{title} #{c.faint}#{dashes(@width - String.length(title) - 4)}╮#{c.reset}"

    footer = "#{c.faint}╰#{dashes(@width)}╯#{c.reset}"

    Enum.join([header | body] ++ [footer], "\n")
  end

  defp row(content, c) do
    plain = Regex.replace(~r/\e\[[0-9;]*m/, content, "")

    {shown, len} =
      if String.length(plain) > @width - 2,
        do: {String.slice(plain, 0, @width - 5) <> "...", @width - 2},
        else: {content, String.length(plain)}

    "#{c.faint}│#{c.reset}#{shown}#{String.duplicate(" ", max(0, @width - len - 1))}#{c.faint}│#{c.reset}"
  end

  defp tail(output, max) when is_binary(output) do
    case String.trim(output) do
      "" -> []
      text -> text |> String.split("\n") |> Enum.take(-max)
    end
  end

  defp tail(_, _), do: []

  defp dashes(n), do: String.duplicate("─", max(0, n))

  defp colors(true), do: %{red: "", yellow: "", cyan: "", faint: "", reset: ""}

  defp colors(false),
    do: %{
      red: IO.ANSI.red(),
      yellow: IO.ANSI.yellow(),
      cyan: IO.ANSI.cyan(),
      faint: IO.ANSI.faint(),
      reset: IO.ANSI.reset()
    }
end
