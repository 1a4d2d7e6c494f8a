defmodule SykliK8s.CLI.Progress do
  @moduledoc """
  How `sykli run` shows a run: for people (start and finish lines with durations, log lines
  prefixed with the task name, a summary table) or as JSON lines (`--json`: one object per
  event, each with `"event"` and `"time"`, the last one `"summary"`).
  """

  @doc "A reporter printing for people."
  @spec human() :: (term() -> :ok)
  def human, do: fn event -> human_event(event) end

  @doc "A reporter printing one JSON object per line."
  @spec json() :: (term() -> :ok)
  def json, do: fn event -> IO.puts(SykliK8s.JSON.encode!(json_event(event))) end

  defp human_event({:run_started, info}) do
    IO.puts(
      "sykli: run #{info.run_id}: #{info.tasks} #{plural(info.tasks, "task")}, #{info.source}, " <>
        "namespace #{info.namespace} on #{info.server}"
    )
  end

  defp human_event({:source_uploaded, %{existed: true} = u}),
    do:
      IO.puts("sykli: tree #{String.slice(u.tree, 0, 12)} is already on claim #{u.claim}: nothing to upload")

  defp human_event({:source_uploaded, u}) do
    IO.puts(
      "sykli: uploaded #{u.files_sent} of #{u.files} files (#{u.files_deleted} deleted, #{u.bytes_sent} bytes) " <>
        "into claim #{u.claim}: tree #{String.slice(u.tree, 0, 12)}"
    )
  end

  defp human_event({:source_published, %{existed: true} = p}),
    do: IO.puts("sykli: #{p.object} already holds tree #{String.slice(p.tree, 0, 12)}: nothing to upload")

  defp human_event({:source_published, p}),
    do: IO.puts("sykli: uploaded #{p.files} files as #{p.size} bytes to #{p.object}")

  defp human_event({:task_started, name, %{job: job}}), do: IO.puts("▶ #{name} started (Job #{job})")
  defp human_event({:task_log, name, "task", line}), do: IO.puts("[#{name}] #{shown(line)}")
  defp human_event({:task_log, name, container, line}), do: IO.puts("[#{name}:#{container}] #{shown(line)}")
  defp human_event({:task_phase, _name, _phase, _message}), do: :ok
  defp human_event({:task_finished, name, result}), do: IO.puts(finished_line(name, result))
  defp human_event({:run_finished, status, results}), do: IO.write(summary(status, results))

  # Progress meters redraw with carriage returns: a terminal shows the last state.
  defp shown(line) do
    line
    |> String.split("\r")
    |> Enum.reject(&(String.trim(&1) == ""))
    |> List.last("")
    |> String.trim_trailing()
  end

  defp finished_line(name, %{status: :succeeded} = r), do: "✓ #{name} succeeded in #{duration(r)}"
  defp finished_line(name, %{status: :failed} = r), do: "✗ #{name} failed#{after_time(r)}: #{r.reason}"
  defp finished_line(name, %{status: :skipped} = r), do: "- #{name} skipped: #{r.reason}"
  defp finished_line(name, %{status: :cancelled} = r), do: "■ #{name} cancelled#{after_time(r)}: #{r.reason}"

  defp after_time(%{duration_ms: nil}), do: ""
  defp after_time(r), do: " after #{duration(r)}"

  @doc "The final table: one row per task, then a line of counts."
  @spec summary(atom(), [map()]) :: String.t()
  def summary(status, results) do
    rows =
      Enum.map(results, fn r ->
        [r.name, to_string(r.status), if(r.duration_ms, do: duration(r), else: "-"), detail(r)]
      end)

    header = ["TASK", "STATUS", "TIME", "DETAIL"]
    widths = Enum.map(0..2, fn i -> Enum.max(Enum.map([header | rows], &String.length(Enum.at(&1, i)))) end)

    lines =
      Enum.map([header | rows], fn row ->
        cells =
          Enum.zip(Enum.take(row, 3), widths) |> Enum.map(fn {cell, w} -> String.pad_trailing(cell, w) end)

        String.trim_trailing(Enum.join(cells ++ [Enum.at(row, 3)], "  "))
      end)

    counts =
      results
      |> Enum.frequencies_by(& &1.status)
      |> Enum.sort_by(fn {s, _} ->
        Enum.find_index([:succeeded, :failed, :skipped, :cancelled], &(&1 == s))
      end)
      |> Enum.map_join(", ", fn {s, n} -> "#{n} #{s}" end)

    "\n" <> Enum.join(lines, "\n") <> "\n\n#{verdict(status)}: #{counts}\n"
  end

  defp verdict(:succeeded), do: "run succeeded"
  defp verdict(:failed), do: "run failed"
  defp verdict(:cancelled), do: "run cancelled"

  defp detail(%{status: :succeeded}), do: ""
  defp detail(%{job: job, reason: reason}) when is_binary(job), do: "#{first_line(reason)} (Job #{job})"
  defp detail(%{reason: reason}), do: first_line(reason)

  defp first_line(nil), do: ""
  defp first_line(text), do: text |> String.split("\n") |> hd()

  defp duration(%{duration_ms: ms}) when ms < 60_000,
    do: :erlang.float_to_binary(ms / 1000, decimals: 1) <> "s"

  defp duration(%{duration_ms: ms}), do: "#{div(ms, 60_000)}m#{div(rem(ms, 60_000), 1000)}s"

  defp plural(1, word), do: word
  defp plural(_, word), do: word <> "s"

  @doc false
  def json_event(event), do: Map.put(json_fields(event), :time, DateTime.to_iso8601(DateTime.utc_now()))

  defp json_fields({:run_started, info}), do: Map.put(info, :event, "run_started")
  defp json_fields({:source_uploaded, u}), do: Map.put(u, :event, "source_uploaded")
  defp json_fields({:source_published, p}), do: Map.put(p, :event, "source_published")
  defp json_fields({:task_started, name, %{job: job}}), do: %{event: "task_started", task: name, job: job}

  defp json_fields({:task_log, name, container, line}),
    do: %{event: "log", task: name, container: container, line: line}

  defp json_fields({:task_phase, name, phase, message}),
    do: %{event: "phase", task: name, phase: phase, message: message}

  defp json_fields({:task_finished, name, result}),
    do: result |> task_json() |> Map.merge(%{event: "task_finished", task: name})

  defp json_fields({:run_finished, status, results}),
    do: %{event: "summary", status: status, tasks: Enum.map(results, &task_json/1)}

  defp task_json(r), do: Map.take(r, [:name, :status, :duration_ms, :job, :kind, :reason, :exit_code])
end
