defmodule SykliK8s.Test.Pipeline do
  @moduledoc """
  Pipelines and run output for the end-to-end tests of `bin/sykli run --target=k8s`.
  """

  import ExUnit.Assertions

  @doc """
  Writes a version 2 pipeline of `tasks` (with the `src:.` directory resource) into `dir`,
  outside the repository, so writing it leaves the working tree as it was. Returns the path.
  """
  def file!(dir, tasks) do
    file = Path.join(dir, "pipeline-#{System.unique_integer([:positive])}.json")
    resources = %{"src:." => %{type: "directory", path: "."}}
    File.write!(file, SykliK8s.JSON.encode!(%{version: "2", tasks: tasks, resources: resources}))
    file
  end

  @doc "A task in any image with the repository mounted at /app."
  def task(name, command, extra \\ %{}),
    do:
      Map.merge(
        %{
          name: name,
          container: "any",
          command: command,
          mounts: [%{resource: "src:.", path: "/app", type: "directory"}]
        },
        extra
      )

  @doc "The `--json` events among the lines of `out` (other lines, e.g. warnings, skipped)."
  def events(out) do
    out
    |> String.split("\n", trim: true)
    |> Enum.flat_map(fn line ->
      case SykliK8s.JSON.decode(line) do
        {:ok, %{"event" => _} = e} -> [e]
        _ -> []
      end
    end)
  end

  @doc "The first event named `name`; fails showing the output when there is none."
  def event!(out, name), do: Enum.find(events(out), &(&1["event"] == name)) || flunk(out)

  @doc "Whether task output `line` was logged."
  def logged?(out, line), do: Enum.any?(events(out), &(&1["event"] == "log" and &1["line"] == line))
end
