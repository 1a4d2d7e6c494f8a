defmodule SykliK8s.Config do
  @moduledoc """
  The Kubernetes settings of `.sykli/config.exs`, read with Elixir's `Config.Reader`:

      import Config
      config :sykli, :k8s,
        namespace: "ci",
        context: "prod",
        clone_depth: 1,
        git_image: "docker.io/alpine/git:v2.54.0"

  Every key is checked: an unknown key or a value of the wrong type is an error naming the
  key, the value and the file (with a suggestion for a likely typo). A config file that
  raises is reported, never a crash. Precedence, highest first: CLI flags, a task's own
  `k8s` options (applied when its Job is built), this file, `SYKLI_K8S_NAMESPACE`,
  defaults (`effective/3`).
  """

  alias SykliK8s.Error

  @file_name ".sykli/config.exs"

  # key => {type, description of the type for errors}
  @keys %{
    namespace: {:dns_label, "a namespace name"},
    context: {:string, "a kubeconfig context name"},
    kubeconfig: {:string, "a path"},
    source_strategy: {{:one_of, [:git_clone, :pvc, :s3]}, ":git_clone, :pvc or :s3"},
    git_ref: {:string, "a branch, tag or commit of the remote"},
    source_pvc: {:string, "a PersistentVolumeClaim name"},
    source_sync: {{:one_of, [:rsync, :git]}, ":rsync or :git"},
    source_exclude: {:string_list, "a list of git pathspecs"},
    source_mount: {{:one_of, [:copy, :shared]}, ":copy or :shared"},
    sync_image: {:string, "an image reference"},
    sync_back: {:boolean, "true or false"},
    artifact_pvc: {:claim_or_false, "a PersistentVolumeClaim name, or false (tasks mount no artifact claim)"},
    git_ssh_secret: {:string, "a Secret name"},
    git_ssh_key: {:string, "a key of the Secret (default ssh-privatekey)"},
    git_known_hosts: {:string, "a ConfigMap name, or secret/NAME for a Secret"},
    git_known_hosts_key: {:string, "a key (default known_hosts)"},
    git_ssh_accept_new: {:boolean, "true or false"},
    git_token_secret: {:string, "a Secret name"},
    git_token_key: {:string, "a key of the Secret (default token)"},
    git_token_username_key: {:string, "a key of the Secret"},
    git_token_username: {:string, "a user name"},
    git_credentials_secret: {:string, "a Secret name"},
    git_credentials_key: {:string, "a key of the Secret (default .git-credentials)"},
    git_ca_bundle: {:string, "a ConfigMap name, or secret/NAME for a Secret"},
    git_ca_bundle_key: {:string, "a key (default ca.crt)"},
    git_http_proxy: {:string, "a proxy URL"},
    git_https_proxy: {:string, "a proxy URL"},
    git_no_proxy: {:string, "a comma-separated list of hosts"},
    clone_depth: {:depth, "a positive integer or :full"},
    clone_attempts: {{:int, 1, 20}, "an integer from 1 to 20"},
    clone_backoff: {{:int, 0, 60}, "seconds, from 0 to 60"},
    submodules: {{:one_of, [false, true, :recursive]}, "false, true or :recursive"},
    submodule_depth: {:depth, "a positive integer or :full"},
    lfs: {{:one_of, [true, false, :auto]}, "true, false or :auto"},
    sparse: {:string_list, "a list of paths"},
    git_image: {:string, "an image reference"},
    default_image: {:string, "an image reference"},
    create_namespace: {:boolean, "true or false"},
    keep_failed: {:boolean, "true or false"},
    ttl_seconds_after_finished: {{:int, 0, 31_536_000}, "seconds, 0 or more"},
    unschedulable_grace: {{:int, 1, 86_400}, "seconds, 1 or more"},
    # Checked as a quantity when the Jobs are built (the Rust quantity module), before any call.
    workspace_size_limit: {:quantity, ~s(a size, a Kubernetes quantity such as "20Gi")},
    s3:
      {:keyword,
       "a keyword list: bucket: (required), prefix:, region:, endpoint:, force_path_style:, " <>
         "multipart_threshold:, multipart_chunksize:, ca_bundle:"}
  }

  @s3_keys [
    :bucket,
    :prefix,
    :region,
    :endpoint,
    :force_path_style,
    :multipart_threshold,
    :multipart_chunksize,
    :ca_bundle
  ]

  @doc "The config file's path for a repository root."
  def path(root), do: Path.join(root, @file_name)

  @doc """
  The `:k8s` settings of the repository's config file as a map (empty when there is no
  file), or an error naming the problem and the file.
  """
  @spec load(Path.t()) :: {:ok, map()} | {:error, Error.t()}
  def load(root) do
    file = path(root)

    if File.exists?(file) do
      with {:ok, config} <- read(file), do: validate(Keyword.get(config, :sykli, []), file)
    else
      {:ok, %{}}
    end
  end

  defp read(file) do
    {:ok, Config.Reader.read!(file)}
  rescue
    e ->
      {:error, %Error{kind: :invalid_config, message: "#{file} could not be read: #{Exception.message(e)}"}}
  end

  defp validate(sykli, file) do
    k8s = if Keyword.keyword?(sykli), do: Keyword.get(sykli, :k8s, []), else: nil

    if Keyword.keyword?(k8s) do
      Enum.reduce_while(k8s, {:ok, %{}}, fn {key, value}, {:ok, acc} ->
        case check(key, value) do
          :ok -> {:cont, {:ok, Map.put(acc, key, value)}}
          {:error, why} -> {:halt, {:error, %Error{kind: :invalid_config, message: "#{file}: #{why}"}}}
        end
      end)
    else
      {:error, %Error{kind: :invalid_config, message: "#{file}: config :sykli, :k8s must be a keyword list"}}
    end
  end

  @doc """
  Checks command-line values with the config file's rules: `:ok` or an error naming the
  flag (`--namespace`) and the value.
  """
  @spec check_flags(map() | keyword()) :: :ok | {:error, Error.t()}
  def check_flags(flags) do
    Enum.find_value(flags, :ok, fn {key, value} ->
      case value != nil && check(key, value) do
        {:error, _} ->
          flag = "--" <> String.replace(to_string(key), "_", "-")
          {_, description} = @keys[key]

          {:error,
           %Error{kind: :invalid_option, message: "#{flag} is #{inspect(value)}, but must be #{description}"}}

        _ ->
          nil
      end
    end)
  end

  @doc """
  Checks the claims of a run's settings together: `artifact_pvc` (the default
  `"sykli-artifacts"` included) must not be `source_pvc`. Jobs write the artifact claim;
  were it the source claim, they could reach the published trees every later Job checks
  out. `:ok` or an error naming both keys and the fix, before anything is contacted.
  """
  @spec check_claims(map()) :: :ok | {:error, Error.t()}
  def check_claims(settings) do
    case {settings[:artifact_pvc], settings[:source_pvc]} do
      {claim, claim} when is_binary(claim) ->
        {:error,
         %Error{
           kind: :invalid_config,
           message:
             "artifact_pvc and source_pvc are both #{inspect(claim)}: Jobs write the artifact claim, so it " <>
               "must be another claim than the source's (give them two claims in #{@file_name}, e.g. " <>
               "artifact_pvc: \"sykli-artifacts\" and source_pvc: \"sykli-source\")"
         }}

      _ ->
        :ok
    end
  end

  @doc "The keys `.sykli/config.exs` may set under `config :sykli, :k8s`."
  def keys, do: Map.keys(@keys)

  defp check(key, value) do
    case Map.fetch(@keys, key) do
      :error ->
        {:error, "unknown key #{inspect(key)} in config :sykli, :k8s#{suggest(key)}"}

      {:ok, {:keyword, description}} ->
        s3_check(value, description)

      {:ok, {type, description}} ->
        if valid?(type, value),
          do: :ok,
          else: {:error, "#{inspect(key)} is #{inspect(value)}, but must be #{description}"}
    end
  end

  # Names the bad sub-key without echoing values: a misplaced secret must not reach a log.
  defp s3_check(value, description) do
    bad = if Keyword.keyword?(value), do: Enum.find(value, fn {k, v} -> not valid?(:keyword, [{k, v}]) end)

    case {Keyword.keyword?(value), bad} do
      {false, _} ->
        {:error, ":s3 must be #{description}"}

      {true, nil} ->
        :ok

      {true, {k, _}} when k in @s3_keys ->
        {:error, ":s3 #{inspect(k)} has a value of the wrong type (#{description})"}

      {true, {k, _}} ->
        {:error,
         ":s3 has an unknown key #{inspect(k)} (#{description}); credentials come from the AWS chain " <>
           "(AWS_ACCESS_KEY_ID, AWS_PROFILE, SSO, web identity, container or instance credentials), never from this file"}
    end
  end

  defp suggest(key) do
    name = to_string(key)
    best = Enum.max_by(Map.keys(@keys), &String.jaro_distance(to_string(&1), name))
    if String.jaro_distance(to_string(best), name) > 0.8, do: " (did you mean #{inspect(best)}?)", else: ""
  end

  defp valid?(:string, v), do: is_binary(v) and v != ""
  defp valid?(:boolean, v), do: is_boolean(v)
  defp valid?(:claim_or_false, v), do: v == false or valid?(:string, v)
  defp valid?(:dns_label, v), do: is_binary(v) and v =~ ~r/\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\z/
  defp valid?({:one_of, allowed}, v), do: v in allowed
  defp valid?({:int, min, max}, v), do: is_integer(v) and v >= min and v <= max
  defp valid?(:depth, v), do: v == :full or (is_integer(v) and v >= 1)
  defp valid?(:quantity, v), do: (is_binary(v) and v != "") or (is_integer(v) and v > 0)
  defp valid?(:string_list, v), do: is_list(v) and Enum.all?(v, &(is_binary(&1) and &1 != ""))

  defp valid?(:keyword, v),
    do: Keyword.keyword?(v) and Enum.all?(v, fn {k, x} -> k in @s3_keys and s3_value?(k, x) end)

  defp s3_value?(:force_path_style, v), do: is_boolean(v)
  defp s3_value?(k, v) when k in [:multipart_threshold, :multipart_chunksize], do: is_integer(v) and v > 0
  defp s3_value?(_k, v), do: is_binary(v)

  @defaults [
    source_strategy: :git_clone,
    namespace: "sykli",
    context: nil,
    clone_depth: 1,
    git_image: "docker.io/alpine/git:v2.54.0",
    git_ssh_secret: nil,
    git_token_secret: nil,
    git_credentials_secret: nil,
    git_known_hosts: nil,
    submodules: false,
    lfs: :auto,
    sparse: nil
  ]

  @doc "The built-in defaults (what a run uses when nothing else says)."
  def defaults, do: Map.new(@defaults)

  @doc """
  The settings a Kubernetes run would use and where each comes from: `flags` (the command
  line) over the config file over `SYKLI_K8S_NAMESPACE` over defaults. Returns a list of
  `{key, value, source}` in a stable order, or the config file's error.
  """
  @spec effective(Path.t(), map(), map()) :: {:ok, [{atom(), term(), String.t()}]} | {:error, Error.t()}
  def effective(root, flags \\ %{}, env \\ System.get_env()) do
    with {:ok, file} <- load(root) do
      layers = layers(file, flags, env)

      keys =
        Keyword.keys(@defaults) ++
          ((layers |> Enum.flat_map(fn {_, l} -> Map.keys(l) end) |> Enum.uniq()) -- Keyword.keys(@defaults))

      {:ok,
       Enum.map(keys, fn key ->
         Enum.find_value(layers, {key, @defaults[key], "default"}, fn {source, layer} ->
           if Map.has_key?(layer, key), do: {key, layer[key], source}
         end)
       end)}
    end
  end

  @doc """
  The same settings as `effective/3`, as a plain map of values (for a run's state).
  """
  @spec resolve(Path.t(), map(), map()) :: {:ok, map()} | {:error, Error.t()}
  def resolve(root, flags \\ %{}, env \\ System.get_env()) do
    with {:ok, settings} <- effective(root, flags, env) do
      {:ok, Map.new(settings, fn {key, value, _source} -> {key, value} end)}
    end
  end

  defp layers(file, flags, env) do
    env_layer = if ns = env["SYKLI_K8S_NAMESPACE"], do: %{namespace: ns}, else: %{}

    [
      {"command line", flags |> Map.new() |> Map.reject(fn {_, v} -> is_nil(v) end)},
      {@file_name, file},
      {"SYKLI_K8S_NAMESPACE", env_layer}
    ]
  end
end
