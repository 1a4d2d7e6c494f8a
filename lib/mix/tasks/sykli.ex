defmodule Mix.Tasks.Sykli do
  @shortdoc "Runs the sykli command line (mix sykli info …)"
  @moduledoc "Runs `Sykli.CLI` inside Mix: `mix sykli info --json`. See `bin/sykli`."
  use Mix.Task

  @impl true
  def run(argv) do
    Mix.Task.run("compile")

    case Sykli.CLI.run(argv) do
      0 -> :ok
      status -> exit({:shutdown, status})
    end
  end
end
