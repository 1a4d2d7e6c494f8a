defmodule Sykli.NativeCompilerTest do
  use ExUnit.Case, async: true

  alias Mix.Tasks.Compile.SykliNative

  test "a second compile with nothing changed runs nothing" do
    # mix test has just compiled; the installed library's stamp matches the sources.
    assert SykliNative.run([]) == {:noop, []}
  end

  test "the fingerprint covers every native source and changes with them" do
    files = SykliNative.native_files()
    assert Path.join(SykliNative.root(), "Cargo.lock") in files
    assert Enum.any?(files, &String.ends_with?(&1, "native/sykli_core/src/git/status.rs"))
    assert Enum.any?(files, &String.ends_with?(&1, "native/sykli_native/src/nif/git.rs"))
    assert SykliNative.fingerprint() =~ ~r/\A[0-9a-f]{32}\z/
  end

  test "the stamp records the fingerprint the library was built from" do
    stamp = Path.join(SykliNative.root(), "priv/native/libsykli_native.so.stamp")
    assert File.read!(stamp) =~ ~r/\A#{SykliNative.fingerprint()} (dev|release)\n\z/
  end
end
