Code.require_file("mix/tasks/compile.sykli_native.ex", __DIR__)

defmodule Sykli.MixProject do
  use Mix.Project

  def project do
    [
      app: :sykli,
      version: "0.1.0",
      elixir: "~> 1.14",
      compilers: [:sykli_native | Mix.compilers()],
      start_permanent: Mix.env() == :prod,
      deps: [],
      test_coverage: [summary: [threshold: 0]]
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end
end
