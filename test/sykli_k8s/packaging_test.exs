defmodule SykliK8s.PackagingTest do
  # What sykli can depend on without a clash: its own OTP app, and exactly three modules in
  # sykli's namespace (the harness in test/support plays sykli and is not the library).
  use ExUnit.Case, async: true

  defp library_modules do
    {:ok, modules} = :application.get_key(:sykli_k8s, :modules)
    support = Path.expand("../support", __DIR__)

    Enum.reject(modules, fn m ->
      m.module_info(:compile)[:source] |> to_string() |> String.starts_with?(support)
    end)
  end

  test "the library defines exactly Sykli.GitContext, Sykli.Target.K8s and Sykli.Target.K8s.Source in sykli's namespace" do
    sykli = library_modules() |> Enum.filter(&String.starts_with?(inspect(&1), "Sykli.")) |> Enum.sort()
    assert sykli == [Sykli.GitContext, Sykli.Target.K8s, Sykli.Target.K8s.Source]

    others = library_modules() -- sykli
    assert others != []

    for m <- others do
      name = inspect(m)

      assert String.starts_with?(name, "SykliK8s") or String.starts_with?(name, "Mix.Tasks.SykliK8s"),
             "#{name} is outside the project's namespace"
    end
  end

  test "the OTP application is :sykli_k8s and the NIF loads from its own priv dir" do
    assert Application.spec(:sykli_k8s, :vsn)
    refute Application.spec(:sykli)
    assert SykliK8s.Native.load_error() == nil
    assert File.exists?(Path.join(:code.priv_dir(:sykli_k8s), "native/libsykli_native.so"))
  end

  test "Sykli.Target.K8s declares sykli's behaviour when it is there (the harness compiles it)" do
    assert Sykli.Target.Behaviour in Keyword.get(Sykli.Target.K8s.module_info(:attributes), :behaviour, [])
  end
end
