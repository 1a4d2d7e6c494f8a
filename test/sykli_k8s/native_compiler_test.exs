defmodule SykliK8s.NativeCompilerTest do
  use ExUnit.Case, async: true

  alias Mix.Tasks.Compile.SykliK8sNative

  test "a second compile with nothing changed runs nothing" do
    # mix test has just compiled; the installed library's stamp matches the sources.
    assert SykliK8sNative.run([]) == {:noop, []}
  end

  test "the fingerprint covers every native source and changes with them" do
    files = SykliK8sNative.native_files()
    assert Path.join(SykliK8sNative.root(), "Cargo.lock") in files
    assert Enum.any?(files, &String.ends_with?(&1, "native/sykli_core/src/git/status.rs"))
    assert Enum.any?(files, &String.ends_with?(&1, "native/sykli_native/src/nif/git.rs"))
    assert SykliK8sNative.fingerprint() =~ ~r/\A[0-9a-f]{32}\z/
  end

  test "the stamp records the fingerprint the library was built from" do
    stamp = Path.join(SykliK8sNative.root(), "priv/native/libsykli_native.so.stamp")
    assert File.read!(stamp) =~ ~r/\A#{SykliK8sNative.fingerprint()} (dev|release)\n\z/
  end

  @tag timeout: 600_000
  test "on a fresh clone, the README's first command works the first time" do
    # A cargo target dir of its own: cargo puts the library of any checkout at the same path
    # of a shared one, so this clone's build would replace the one the suite loads. Kept, as
    # the clone's place is, so later runs rebuild only what changed.
    base = Path.join([System.user_home!(), ".cache", "sykli", "fresh-clone"])
    clone = Path.join(base, "clone")
    File.rm_rf!(clone)
    File.mkdir_p!(base)
    {_, 0} = System.cmd("git", ["clone", "-q", SykliK8sNative.root(), clone], stderr_to_stdout: true)
    refute File.exists?(Path.join(clone, "priv"))
    env = [{"MIX_ENV", "dev"}, {"SYKLI_CWD", clone}, {"CARGO_TARGET_DIR", Path.join(base, "cargo-target")}]
    {out, status} = System.cmd(Path.join(clone, "bin/sykli"), ["info"], env: env, stderr_to_stdout: true)
    assert status == 0, out
    assert out =~ "Repository"
    refute out =~ "native library is missing"
  end
end
