defmodule SykliK8s.NativeTest do
  use ExUnit.Case, async: true

  alias SykliK8s.Native

  defp garbage,
    do: [
      1,
      -1,
      1.5,
      :atom,
      nil,
      {1, 2},
      [1, 2],
      ~c"charlist",
      %{a: 1},
      <<255, 254>>,
      self(),
      make_ref(),
      fn -> :ok end,
      100_000_000_000_000_000_000_000
    ]

  test "the loaded library was built from these sources" do
    {version, fingerprint} = Native.native_info()
    assert version == "0.1.0"
    assert fingerprint == Mix.Tasks.Compile.SykliK8sNative.fingerprint()
    assert Native.load_error() == nil
  end

  describe "garbage arguments raise ArgumentError and never crash the VM" do
    test "git_detect" do
      for g <- garbage() do
        assert_raise ArgumentError, fn -> Native.git_detect(g, %{}, 10) end
        assert_raise ArgumentError, fn -> Native.git_detect(".", g, 10) end

        unless is_integer(g) and g >= 0 and g < 1_000_000 do
          assert_raise ArgumentError, fn -> Native.git_detect(".", %{}, g) end
        end
      end

      assert_raise ArgumentError, fn -> Native.git_detect(".", %{"GIT_BRANCH" => 1}, 10) end
    end

    test "git_parse_remote_url and json_decode" do
      for g <- garbage(), not is_binary(g) do
        assert_raise ArgumentError, fn -> Native.git_parse_remote_url(g) end
        assert_raise ArgumentError, fn -> Native.json_decode(g) end
      end

      assert_raise ArgumentError, fn -> Native.git_parse_remote_url(<<255, 254>>) end
    end

    test "json_encode answers an error for data that cannot be JSON" do
      for g <- [self(), make_ref(), {1, 2}, %{{1} => 1}, <<255>>, [1 | 2], :math.pi() |> then(&[&1, self()])] do
        assert {:error, {:invalid_json, message}} = Native.json_encode(g, false)
        assert is_binary(message)
      end

      assert_raise ArgumentError, fn -> Native.json_encode(1, :yes) end
    end
  end

  describe "error kinds cross the boundary as {:error, {atom, message}}" do
    test "not a git repository" do
      dir = SykliK8s.Test.GitRepo.tmp_dir!()
      assert {:error, {:not_a_git_repo, message}} = Native.git_detect(dir, %{}, 10)
      assert message =~ dir
    end

    test "a path that does not exist" do
      assert {:error, {:not_found, message}} = Native.git_detect("/nonexistent/sykli", %{}, 10)
      assert message =~ "/nonexistent/sykli"
    end

    test "URLs" do
      assert {:error, {:local_remote, _}} = Native.git_parse_remote_url("/srv/repo.git")
      assert {:error, {:invalid_url, _}} = Native.git_parse_remote_url("ftp://h/r")
    end
  end

  test "JSON round-trips plain data" do
    data = %{"a" => [1, -2, 3.5, true, false, nil, "ünïcode"], "b" => %{"c" => []}}
    {:ok, json} = Native.json_encode(data, false)
    assert {:ok, ^data} = Native.json_decode(json)
    assert {:ok, ~s({"k":"atom","n":null})} = Native.json_encode(%{k: :atom, n: nil}, false)
    assert {:error, {:invalid_json, "invalid JSON: " <> _}} = Native.json_decode("{")
  end

  describe "a missing or stale library" do
    setup do
      {:ok, tmp_dir: SykliK8s.Test.GitRepo.tmp_dir!()}
    end

    # Runs a fresh VM whose :sykli_k8s application lives in `app_dir`.
    defp in_vm(app_dir, code) do
      System.cmd("elixir", ["-pa", Path.join(app_dir, "ebin"), "-e", code], stderr_to_stdout: true)
    end

    defp copy_app(tmp_dir, with_library?) do
      app_dir = Path.join(tmp_dir, "sykli_k8s")
      File.mkdir_p!(app_dir)
      File.cp_r!(Path.join(Mix.Project.app_path(), "ebin"), Path.join(app_dir, "ebin"))
      File.mkdir_p!(Path.join(app_dir, "priv/native"))

      if with_library? do
        File.cp!(
          Path.join(:code.priv_dir(:sykli_k8s), "native/libsykli_native.so"),
          Path.join(app_dir, "priv/native/libsykli_native.so")
        )
      end

      app_dir
    end

    test "missing: calls raise a message that says how to build it", %{tmp_dir: tmp} do
      app = copy_app(tmp, false)
      {out, status} = in_vm(app, ~s|Sykli.GitContext.detect(".")|)
      assert status != 0
      assert out =~ "SykliK8s.NativeError"
      assert out =~ "sykli's native library is missing"
      assert out =~ "mix compile"
    end

    test "not a library: says it could not be loaded", %{tmp_dir: tmp} do
      app = copy_app(tmp, false)
      File.write!(Path.join(app, "priv/native/libsykli_native.so"), "not an ELF file")
      {out, status} = in_vm(app, ~s|Sykli.GitContext.detect(".")|)
      assert status != 0
      assert out =~ "could not be loaded"
      assert out =~ "mix compile"
    end

    test "stale: a library built from other sources is refused", %{tmp_dir: tmp} do
      app = copy_app(tmp, true)
      # The real stub module, compiled as if the sources had changed since the build.
      source =
        File.read!("lib/sykli_k8s/native.ex")
        |> String.replace(~r/for path <-.*?@external_resource\(path\)/s, "")
        |> String.replace(~r/@fingerprint Mix\.Tasks.*$/m, ~s|@fingerprint "changed-sources"|)

      File.write!(Path.join(tmp, "stale.ex"), source)
      File.rm!(Path.join(app, "ebin/Elixir.SykliK8s.Native.beam"))
      File.rm!(Path.join(app, "ebin/Elixir.SykliK8s.NativeError.beam"))

      code = ~s|Code.compile_file("#{Path.join(tmp, "stale.ex")}"); SykliK8s.Native.native_info()|
      {out, status} = in_vm(app, code)
      assert status != 0
      assert out =~ "was built from other sources than this code (stale)"
      assert out =~ "mix compile"
    end
  end
end
