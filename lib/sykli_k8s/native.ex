defmodule SykliK8s.Native do
  @moduledoc false
  # The NIF stubs. The library is loaded from priv/ when this module loads; if it is missing
  # or was built from other sources, every stub raises a message that says how to build it.

  @on_load :load_nif

  for path <-
        Mix.Tasks.Compile.SykliK8sNative.native_files() ++ Mix.Tasks.Compile.SykliK8sNative.native_dirs(),
      do: @external_resource(path)

  # The compiler decides which files make the fingerprint; mix.exs requires it, so mix does
  # not track it as a dependency of this module: a change there must recompile this too.
  @external_resource Path.expand("../../mix/tasks/compile.sykli_k8s_native.ex", __DIR__)

  @fingerprint Mix.Tasks.Compile.SykliK8sNative.fingerprint()

  @doc false
  def load_nif do
    case library_path() do
      {:ok, path} ->
        case :erlang.load_nif(String.to_charlist(path), @fingerprint) do
          :ok -> :ok
          {:error, {reason, text}} -> not_loaded(explain(reason, to_string(text), path))
        end

      {:error, why} ->
        not_loaded(why)
    end
  end

  @doc false
  def load_error, do: :persistent_term.get({__MODULE__, :load_error}, nil)

  defp not_loaded(message) do
    :persistent_term.put({__MODULE__, :load_error}, message)
    :ok
  end

  defp library_path do
    case :code.priv_dir(:sykli_k8s) do
      {:error, _} -> {:error, "the :sykli_k8s application is not on the code path"}
      dir -> {:ok, Path.join(to_string(dir), "native/libsykli_native")}
    end
  end

  defp explain(:load, _text, path) do
    "sykli's native library at #{path}.so was built from other sources than this code " <>
      "(stale): rebuild it with `mix compile` in the sykli checkout"
  end

  defp explain(_reason, text, path) do
    if File.exists?(path <> ".so") do
      "sykli's native library at #{path}.so could not be loaded (#{text}): " <>
        "rebuild it with `mix compile` in the sykli checkout"
    else
      "sykli's native library is missing (expected #{path}.so): " <>
        "build it with `mix compile` in the sykli checkout (needs cargo)"
    end
  end

  defp fail, do: raise(SykliK8s.NativeError, load_error() || "sykli's native library is not loaded")

  def native_info, do: fail()
  def git_detect(_path, _ci_env, _max_paths), do: fail()
  def git_parse_remote_url(_url), do: fail()
  def git_resolve_ref(_path, _remote, _listed, _listing, _ref), do: fail()
  def git_confirm_pushed(_path, _remote, _listed, _listing, _sha), do: fail()
  def json_encode(_term, _pretty), do: fail()
  def json_decode(_text), do: fail()
  def k8s_job_name(_task_name, _run_id), do: fail()
  def k8s_build_job(_task_json, _resources_json, _job_name, _options_json), do: fail()
  def k8s_render_pipeline(_pipeline_json, _options_json, _format), do: fail()
  def k8s_connect(_options_json), do: fail()
  def k8s_cluster_info(_cluster), do: fail()
  def k8s_run_job(_cluster, _job_json, _options_json, _tag), do: fail()
  def k8s_cancel(_run), do: fail()
  def k8s_read_secret(_cluster, _namespace, _name, _key), do: fail()
  def k8s_create_volume(_cluster, _namespace, _volume_json), do: fail()
  def k8s_check_jobs(_cluster, _jobs_json, _create_namespace), do: fail()
  def k8s_ensure_namespace(_cluster, _namespace, _create), do: fail()
  def k8s_source_tree(_path, _excludes, _bundle), do: fail()
  def k8s_upload_source(_cluster, _options_json, _tag), do: fail()
  def k8s_finish_run(_cluster, _options_json, _tag), do: fail()
  def k8s_copy_artifact(_cluster, _options_json, _tag), do: fail()
  def k8s_s3_publish(_options_json, _tag), do: fail()
  def k8s_s3_check(_s3_json, _tag), do: fail()
end

defmodule SykliK8s.NativeError do
  @moduledoc "Raised when sykli's native library is missing or stale."
  defexception [:message]
end
