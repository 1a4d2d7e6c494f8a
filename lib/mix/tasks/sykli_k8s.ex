defmodule Mix.Tasks.SykliK8s do
  @shortdoc "Runs the sykli command line (mix sykli_k8s info …)"
  @moduledoc "Runs `SykliK8s.CLI` inside Mix: `mix sykli_k8s info --json`. See `bin/sykli`."
  use Mix.Task

  @impl true
  def run(argv) do
    Mix.Task.run("compile")

    case SykliK8s.CLI.run(argv) do
      0 -> :ok
      status -> exit({:shutdown, status})
    end
  end
end
