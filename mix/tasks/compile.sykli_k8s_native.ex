defmodule Mix.Tasks.Compile.SykliK8sNative do
  @moduledoc """
  Builds the Rust NIF with cargo and installs it as `priv/native/libsykli_native.so`.

  hex.pm (and so the rustler Mix package) is out of reach, so the project owns this small
  compiler. It fingerprints the native sources; when the fingerprint matches the installed
  library nothing runs, so a second `mix compile` is quick. The fingerprint is baked into
  the library too, and `SykliK8s.Native` refuses a library built from other sources.

  Cargo's target directory defaults to `~/.cache/sykli/cargo-target` (override with
  `CARGO_TARGET_DIR`) so that fresh clones, CI included, reuse earlier builds. `MIX_ENV=prod`
  builds the release profile; other environments build the dev profile, which shares its
  artifacts with `cargo test`.
  """
  use Mix.Task.Compiler

  @crate "sykli_native"
  @library "libsykli_native.so"

  @impl true
  def run(_args) do
    root = root()
    fingerprint = fingerprint()
    profile = profile()
    lib = Path.join([root, "priv", "native", @library])
    stamp = lib <> ".stamp"

    result =
      if File.exists?(lib) and File.read(stamp) == {:ok, stamp(fingerprint, profile)} do
        {:noop, []}
      else
        build(root, fingerprint, profile, lib, stamp)
      end

    link_priv(root)
    result
  end

  # Mix links the project's priv/ into the build before any compiler runs; on a fresh clone
  # there is none until this compiler makes it, so the first run would load from a build
  # without the library. Link it now.
  defp link_priv(root) do
    unless File.exists?(Path.join(Mix.Project.app_path(), "priv")) do
      File.mkdir_p!(Path.join(root, "priv"))
      Mix.Project.build_structure()
    end
  end

  defp build(root, fingerprint, profile, lib, stamp) do
    cargo = System.find_executable("cargo") || Mix.raise(missing_cargo())
    target_dir = target_dir()
    args = ["build", "-p", @crate, "--message-format=short"]
    args = if profile == "release", do: args ++ ["--release"], else: args
    Mix.shell().info("Compiling #{@crate} (cargo build, #{profile} profile)")

    env = [{"CARGO_TARGET_DIR", target_dir}, {"SYKLI_NATIVE_FINGERPRINT", fingerprint}]

    case System.cmd(cargo, args,
           cd: root,
           env: env,
           stderr_to_stdout: true,
           into: IO.stream(:standard_error, :line)
         ) do
      {_, 0} ->
        built = Path.join([target_dir, if(profile == "release", do: "release", else: "debug"), @library])
        File.mkdir_p!(Path.dirname(lib))
        # Copy then rename: a running VM that has the old library mapped keeps a valid file.
        # Unique per OS process: two `mix compile` runs of one checkout must not share it.
        tmp = lib <> ".#{System.pid()}.tmp"
        File.cp!(built, tmp)
        File.rename!(tmp, lib)
        File.write!(stamp, stamp(fingerprint, profile))
        {:ok, []}

      {_, status} ->
        Mix.raise("cargo build of #{@crate} failed (exit #{status}); its output is above")
    end
  end

  defp missing_cargo do
    "cargo not found: sykli's native library is Rust. Install the Rust toolchain " <>
      "(https://rustup.rs) and run `mix compile` again"
  end

  defp stamp(fingerprint, profile), do: "#{fingerprint} #{profile}\n"

  defp profile, do: if(Mix.env() == :prod, do: "release", else: "dev")

  @doc "Cargo's target directory: `CARGO_TARGET_DIR`, else a cache that survives fresh clones."
  def target_dir do
    System.get_env("CARGO_TARGET_DIR") ||
      Path.join([System.user_home!(), ".cache", "sykli", "cargo-target"])
  end

  @doc "The project root (where the cargo workspace and mix.exs live)."
  def root, do: Path.expand("../..", __DIR__)

  # The crates linked into the NIF; test infrastructure and benchmarks are not.
  @crates ["sykli_core", "sykli_native", "sykli_sync"]

  @doc "Every file whose change means the library must be rebuilt."
  def native_files do
    root = root()

    [Path.join(root, "Cargo.toml"), Path.join(root, "Cargo.lock")] ++
      Enum.flat_map(@crates, fn crate ->
        dir = Path.join([root, "native", crate])

        Path.wildcard(Path.join(dir, "{Cargo.toml,build.rs}")) ++
          Path.wildcard(Path.join(dir, "src/**/*.{rs,sh}"))
      end)
  end

  @doc """
  The directories holding the native sources: a file added to one changes its mtime, so
  code compiled against `native_files/0` is recompiled when the set of files changes.
  """
  def native_dirs do
    root = root()

    Enum.flat_map(@crates, fn crate ->
      src = Path.join([root, "native", crate, "src"])
      [src | Path.wildcard(Path.join(src, "**/"))]
    end)
    |> Enum.filter(&File.dir?/1)
  end

  @doc "A digest of the native sources (paths and contents)."
  def fingerprint do
    root = root()

    native_files()
    |> Enum.filter(&File.regular?/1)
    |> Enum.sort()
    |> Enum.reduce(:erlang.md5_init(), fn file, md5 ->
      md5
      |> :erlang.md5_update(Path.relative_to(file, root))
      |> :erlang.md5_update(File.read!(file))
    end)
    |> :erlang.md5_final()
    |> Base.encode16(case: :lower)
  end
end
