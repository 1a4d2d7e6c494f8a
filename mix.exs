Code.require_file("mix/tasks/compile.sykli_k8s_native.ex", __DIR__)

defmodule SykliK8s.MixProject do
  use Mix.Project

  def project do
    [
      app: :sykli_k8s,
      version: "0.1.0",
      elixir: "~> 1.14",
      compilers: [:sykli_k8s_native | Mix.compilers()],
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: [],
      test_coverage: [summary: [threshold: 0]]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  def application do
    [extra_applications: [:logger] ++ test_applications(Mix.env())]
  end

  # The end-to-end tests talk to the test cluster's API with OTP's own HTTP client.
  defp test_applications(:test), do: [:inets, :ssl]
  defp test_applications(_), do: []
end
