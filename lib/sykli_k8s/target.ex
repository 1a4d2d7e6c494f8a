defmodule SykliK8s.Target do
  @moduledoc """
  The Kubernetes engine: each task (a task as the pipeline JSON has it) becomes a
  `batch/v1` Job whose task container finds the exact source at its mount paths. This
  project's own command (`SykliK8s.CLI`, `SykliK8s.Run`) drives it directly; sykli's
  executor reaches it through `Sykli.Target.K8s`.

  The Job is built in Rust as typed k8s-openapi objects (`build_job_manifest/4`). With the
  default **git-clone** source strategy an init container fetches exactly the commit of the
  git context into a workspace volume that the task container mounts at each directory
  mount's path (a sub-directory resource becomes a `subPath`).

  Submission (`run_task/3`) runs on the NIF's tokio runtime with kube-rs: preflight, create,
  watch (one watch per namespace and run), live logs, fail-fast reasons, cleanup; the calling
  process receives `{tag, event}` messages and a cancelled or abandoned run deletes its Job.

  State (from `setup/1`): `:namespace` (default `SYKLI_K8S_NAMESPACE`, else `"sykli"`),
  `:git_context` (detected from `:workdir` when absent), `:source_strategy`
  (`:git_clone`), `:clone_depth` (1, any positive number, or `:full`), `:git_image`,
  `:clone_attempts`, `:clone_backoff`, `:default_image`, `:allow_dirty`,
  `:ttl_seconds_after_finished`, `:artifact_pvc` (the artifact claim, default
  `"sykli-artifacts"`; see `artifact_path/4`).
  """

  alias SykliK8s.{Config, Error, Git, JSON, Native}
  alias Sykli.GitContext

  @doc "The target's name."
  def name, do: "k8s"

  @doc """
  Builds the target's state and connects to the cluster (kubeconfig from `:kubeconfig`,
  else `KUBECONFIG` / `~/.kube/config`, else the in-cluster account; `:context` picks a
  context). With `dry_run: true` nothing is contacted.

  Settings (`SykliK8s.Config.keys/0`) given in `opts` win over the repository's
  `.sykli/config.exs`, which wins over `SYKLI_K8S_NAMESPACE` and the defaults; an invalid
  config file is an error here, before anything is contacted.
  """
  @spec setup(keyword()) :: {:ok, map()} | {:error, Error.t()}
  def setup(opts \\ []) do
    {flags, rest} = opts |> Map.new() |> Map.split(Config.keys())
    workdir = Map.get(rest, :workdir) || File.cwd!()
    rest = Map.put_new_lazy(rest, :git_context, fn -> detected(workdir) end)
    root = (rest.git_context && rest.git_context.root) || workdir

    with :ok <- Config.check_flags(flags),
         {:ok, settings} <- Config.resolve(root, flags),
         state =
           %{
             workdir: workdir,
             allow_dirty: false,
             artifact_pvc: "sykli-artifacts",
             run_id: run_id(),
             cluster: nil
           }
           |> Map.merge(settings)
           |> Map.merge(rest),
         :ok <- Config.check_claims(state) do
      if state[:dry_run] || state.cluster do
        {:ok, state}
      else
        with {:ok, cluster} <- connect(Map.take(state, [:kubeconfig, :context])) do
          {:ok, %{state | cluster: cluster}}
        end
      end
    end
  end

  defp detected(workdir) do
    case Git.detect(workdir) do
      {:ok, ctx} -> ctx
      {:error, _} -> nil
    end
  end

  @doc "Whether a cluster is reachable with the default kubeconfig."
  @spec available?() :: {:ok, map()} | {:error, Error.t()}
  def available? do
    with {:ok, cluster} <- connect(%{}), do: {:ok, Native.k8s_cluster_info(cluster)}
  end

  @doc "Deletes nothing and holds nothing: runs clean up after themselves."
  def teardown(_state), do: :ok

  @doc """
  A secret's value from the cluster: `"name"` reads key `"value"` of Secret `name`,
  `"name/key"` reads `key` (in the state's namespace).
  """
  @spec resolve_secret(String.t(), map()) :: {:ok, String.t()} | {:error, :not_found | Error.t()}
  def resolve_secret(ref, %{cluster: cluster, namespace: ns}) when is_binary(ref) and cluster != nil do
    {name, key} =
      case String.split(ref, "/", parts: 2) do
        [name, key] -> {name, key}
        [name] -> {name, "value"}
      end

    case Error.wrap(Native.k8s_read_secret(cluster, ns, name, key)) do
      {:ok, value} -> {:ok, value}
      {:error, %Error{kind: :not_found}} -> {:error, :not_found}
      {:error, _} = error -> error
    end
  end

  @doc """
  A volume tasks can share: a PersistentVolumeClaim named `name` (created unless it exists)
  of `%{size: "10Gi", storage_class: nil | "fast", type: nil | "ReadWriteMany"}`. The
  reference is the claim name, for a task's `k8s.volumes` `pvc.claim_name`.
  """
  @spec create_volume(String.t(), map(), map()) :: {:ok, map()} | {:error, Error.t()}
  def create_volume(name, opts, %{cluster: cluster, namespace: ns}) when cluster != nil do
    volume =
      compact(%{
        name: name,
        size: opts[:size] || "1Gi",
        storage_class: opts[:storage_class],
        access_mode: opts[:type]
      })

    with {:ok, json} <- JSON.encode(volume),
         {:ok, :ok} <- Error.wrap(Native.k8s_create_volume(cluster, ns, json)) do
      {:ok, %{id: name, host_path: nil, reference: name}}
    end
  end

  @doc """
  Makes sure the run's namespace exists: created when missing with `create_namespace`
  (the default), else an error naming it and how to have it created or choose another.
  """
  @spec ensure_namespace(map()) :: :ok | {:error, Error.t()}
  def ensure_namespace(%{cluster: cluster, namespace: ns} = state) when cluster != nil do
    with {:ok, :ok} <-
           Error.wrap(Native.k8s_ensure_namespace(cluster, ns, Map.get(state, :create_namespace) == true)),
         do: :ok
  end

  @doc """
  On Kubernetes a task's services run as native sidecars inside the task's own Job (see
  `build_job_manifest/4`): nothing starts separately, and they stop with the task.
  """
  def start_services(_task, _network, _state), do: {:ok, []}
  def stop_services(_services, _state), do: :ok

  @doc """
  A client for the cluster, shared by every task of a run: `%{kubeconfig: path, context:
  name, namespace: ns}`, all optional.
  """
  @spec connect(map()) :: {:ok, reference()} | {:error, Error.t()}
  def connect(opts) do
    opts = opts |> Map.take([:kubeconfig, :context, :namespace]) |> compact()

    with {:ok, json} <- JSON.encode(opts) do
      Error.wrap(Native.k8s_connect(json))
    end
  end

  @doc """
  Runs `task` as a Job and waits for it: `:ok`, or `{:error, %SykliK8s.Error{}}` with a kind
  (`:task_failed` with `details.exit_code`, `:image_pull`, `:config_error`, `:unschedulable`,
  `:pod_rejected` (the cluster refused to create the pod: Pod Security, a quota), `:clone_failed`,
  `:oom_killed`, `:deadline_exceeded` (the task's own timeout), `:timeout` (the client-side
  deadline), `:evicted` (the Eviction API, a preemption, the node's pressure), `:node_lost` (its
  node was lost or tainted NoExecute), `:cancelled`, or an API error such as `:not_found` from
  the preflight).

  `opts`: `:resources` (the pipeline's), `:on_event` (called with `{:phase, phase, message}`
  and `{:log, container, line}`; default prints log lines prefixed with the task name),
  `:keep_failed`, `:create_namespace`, `:timeout` (seconds, client side),
  `:unschedulable_grace` (seconds).
  """
  @spec run_task(map(), map(), keyword()) :: :ok | {:error, Error.t()}
  def run_task(task, state, opts \\ []) do
    with {:ok, run} <- start_task(task, state, opts) do
      case await(run, Keyword.get(opts, :on_event, default_printer(task))) do
        {:ok, _outcome} -> :ok
        {:error, _} = error -> error
      end
    end
  end

  @doc """
  Starts `task` as a Job and returns at once with a run (`%{handle, tag, job}`): events
  arrive as `{tag, event}` messages to the calling process. See `await/2` and `cancel/1`.
  `opts` as for `run_task/3`, and `:attempt` (2 and more: a retry, in a Job of its own).
  """
  @spec start_task(map(), map(), keyword()) :: {:ok, map()} | {:error, Error.t()}
  def start_task(task, %{cluster: cluster} = state, opts \\ []) when cluster != nil do
    name = job_name(to_string(task[:name] || task["name"] || ""), attempt_id(state.run_id, opts[:attempt]))

    run_opts =
      compact(%{
        keep_failed: Keyword.get(opts, :keep_failed, Map.get(state, :keep_failed)),
        create_namespace: Keyword.get(opts, :create_namespace, Map.get(state, :create_namespace)),
        timeout_seconds: Keyword.get(opts, :timeout),
        unschedulable_grace_seconds:
          Keyword.get(opts, :unschedulable_grace, Map.get(state, :unschedulable_grace))
      })

    with {:ok, job} <- build_job_manifest(task, name, state, Keyword.put(opts, :run_id, state.run_id)),
         {:ok, s3_source} <- s3_source(state),
         {:ok, job_json} <- JSON.encode(job),
         {:ok, run_json} <- JSON.encode(Map.merge(run_opts, compact(%{s3_source: s3_source}))) do
      tag = make_ref()

      case Native.k8s_run_job(cluster, job_json, run_json, tag) do
        {:ok, handle} -> {:ok, %{handle: handle, tag: tag, job: name}}
        {:error, _} = error -> Error.wrap(error)
      end
    end
  end

  @doc """
  Receives a run's events until it is done, calling `on_event` for each phase and log
  line. Returns `{:ok, outcome}` or `{:error, %SykliK8s.Error{details: outcome}}`.
  """
  @spec await(map(), (term() -> any())) :: {:ok, map()} | {:error, Error.t()}
  def await(run, on_event \\ fn _ -> :ok end) do
    {result, nil} =
      await_fold(run, nil, fn event, nil ->
        _ = on_event.(event)
        nil
      end)

    result
  end

  @doc """
  Like `await/2`, folding every event into `acc` with `fun.(event, acc)`; returns
  `{result, acc}`.
  """
  @spec await_fold(map(), acc, (term(), acc -> acc)) :: {{:ok, map()} | {:error, Error.t()}, acc}
        when acc: term()
  def await_fold(%{handle: handle, tag: tag} = run, acc, fun) do
    receive do
      {^tag, {:done, {:ok, outcome}}} ->
        # The handle stays referenced until here, so it is not collected (and cancelled).
        _ = handle
        {{:ok, outcome}, acc}

      {^tag, {:done, {:error, {kind, message, outcome}}}} ->
        {{:error, %Error{kind: kind, message: message, details: outcome}}, acc}

      {^tag, event} ->
        await_fold(run, fun.(event, acc), fun)
    end
  end

  @doc """
  The PVC strategy's upload: the working tree (what git sees, dirty changes included, minus
  `source_exclude`) goes into the claim `source_pvc` through a receiver pod, only what the
  claim's latest tree lacks. Returns the state the Jobs are built from (tree and, for a
  ReadWriteOnce claim, the node) and the report (`bytes_sent`, `files_sent`, `existed`, …).
  """
  @spec upload_source(map()) :: {:ok, map(), map()} | {:error, Error.t()}
  def upload_source(%{cluster: cluster} = state) when cluster != nil do
    with {:ok, claim} <- claim(state),
         {:ok, ctx} <- git_context(state),
         {:ok, report} <-
           with_bundle_dir(state, ctx, fn bundle ->
             with {:ok, json} <-
                    JSON.encode(
                      compact(%{
                        namespace: state.namespace,
                        claim: claim,
                        image: state[:sync_image],
                        root: ctx.root,
                        excludes: state[:source_exclude] || [],
                        bundle_dir: bundle
                      })
                    ),
                  do: background(&Native.k8s_upload_source(cluster, json, &1))
           end) do
      {:ok, Map.merge(state, %{pvc_tree: report.tree, pvc_node: report.node}), report}
    end
  end

  @doc """
  The S3 strategy's upload, once per run: the working tree (as for the PVC strategy) or
  HEAD as a git bundle (`source_sync: :git`) is packed into one archive keyed by its tree
  hash and uploaded to `s3: [bucket: ...]` unless the bucket already has it, with
  credentials from the AWS chain of this process. Returns the state the Jobs are built from
  (the archive) and the report (`uploaded_bytes`, `existed`, `size`, `key`, `warnings`).
  Nothing is signed here: `start_task/3` signs each Job's GET URL when it submits the Job,
  for the task's own timeout plus a margin, into a Secret the Job owns. With
  `dry_run: true` the archive is only packed (for its checksum): no credentials, no call.
  """
  @spec publish_source(map(), keyword()) :: {:ok, map(), map()} | {:error, Error.t()}
  def publish_source(state, opts \\ []) do
    with {:ok, s3} <- s3_settings(state),
         {:ok, ctx} <- git_context(state),
         {:ok, report} <-
           with_bundle_dir(state, ctx, fn bundle ->
             with {:ok, json} <-
                    JSON.encode(
                      compact(%{
                        root: ctx.root,
                        excludes: state[:source_exclude] || [],
                        bundle_dir: bundle,
                        s3: s3,
                        # The archive is packed in a private directory made in here, and
                        # removed with it (source/s3.rs `publish`).
                        scratch: System.tmp_dir!(),
                        dry_run: Keyword.get(opts, :dry_run, false),
                        env: aws_env()
                      })
                    ),
                  do: background(&Native.k8s_s3_publish(json, &1))
           end) do
      {:ok, Map.put(state, :s3_published, report), report}
    end
  end

  # The S3 strategy: what signs each Job's URL of the published archive when it is
  # submitted (credentials resolved then, from the AWS chain of this process). Unpublished:
  # nothing, and the submission refuses a Job that reads a URL.
  defp s3_source(%{source_strategy: :s3, s3_published: %{key: key}} = state) when is_binary(key) do
    with {:ok, s3} <- s3_settings(state), do: {:ok, %{s3: s3, key: key, env: aws_env()}}
  end

  defp s3_source(_state), do: {:ok, nil}

  @doc """
  For `sykli info --check` with the S3 strategy: resolves the credentials (as a run would)
  and checks that the bucket exists and lets them list the archives' prefix. Uploads nothing.
  """
  @spec check_bucket(map()) :: {:ok, map()} | {:error, Error.t()}
  def check_bucket(state) do
    with {:ok, s3} <- s3_settings(state),
         {:ok, json} <- JSON.encode(%{s3: s3, env: aws_env()}) do
      background(&Native.k8s_s3_check(json, &1))
    end
  end

  # The AWS chain reads the environment as this VM has it: `System.put_env/2` changes the
  # VM's copy, which the native library cannot see in the OS environment.
  defp aws_env do
    System.get_env() |> Map.filter(fn {k, _} -> k == "HOME" or String.starts_with?(k, "AWS_") end)
  end

  defp s3_settings(state) do
    s3 = Map.new(state[:s3] || [])

    if is_binary(s3[:bucket]) do
      {:ok, expand_ca_bundle(s3, state)}
    else
      {:error,
       %Error{
         kind: :invalid_config,
         message:
           "the s3 source strategy needs a bucket: config :sykli, :k8s, s3: [bucket: \"NAME\"] " <>
             "(and region:, or endpoint: for MinIO and other S3-compatible services)"
       }}
    end
  end

  # `ca_bundle:` is a file on this machine: `~` and a relative path (from the repository's
  # root, where the config file is) are resolved here, once for every reader of it.
  defp expand_ca_bundle(%{ca_bundle: path} = s3, state) when is_binary(path) do
    base =
      case state do
        %{git_context: %GitContext{root: root}} when is_binary(root) -> root
        _ -> Map.get(state, :workdir, File.cwd!())
      end

    %{s3 | ca_bundle: Path.expand(path, base)}
  end

  defp expand_ca_bundle(s3, _state), do: s3

  @doc """
  After a task of a PVC-strategy run with `sync_back`: copies its declared `outputs` (which
  its Job's sidecar left on the claim) back into the working tree when it succeeded,
  extracted with the hardened rules, and removes them from the claim. `namespace` is where
  its Job ran (`nil`: it never existed, there is nothing to fetch).
  """
  @spec finish_task(map(), map(), String.t(), String.t() | nil, boolean()) ::
          {:ok, map()} | {:error, Error.t()}
  def finish_task(state, task, job, namespace, succeeded?) do
    declared = outputs(task)

    if Map.get(state, :source_strategy) == :pvc and state[:sync_back] == true and declared != [] and
         namespace != nil and state.cluster != nil do
      outputs = if succeeded?, do: declared, else: []

      with {:ok, claim} <- claim(state),
           {:ok, ctx} <- git_context(state),
           {:ok, json} <-
             JSON.encode(
               compact(%{
                 namespace: namespace,
                 claim: claim,
                 image: state[:sync_image],
                 job: job,
                 outputs: outputs,
                 dest: ctx.root,
                 remove: true
               })
             ) do
        background(&Native.k8s_finish_run(state.cluster, json, &1))
      end
    else
      {:ok, %{files: 0, bytes: 0}}
    end
  end

  defp outputs(task) do
    case task["outputs"] || task[:outputs] do
      list when is_list(list) -> Enum.filter(list, &is_binary/1)
      map when is_map(map) -> map |> Map.values() |> Enum.filter(&is_binary/1)
      _ -> []
    end
  end

  defp claim(state) do
    case state[:source_pvc] do
      nil ->
        {:error,
         %Error{
           kind: :invalid_config,
           message: "the pvc source strategy needs source_pvc: the PersistentVolumeClaim to upload into"
         }}

      claim ->
        {:ok, claim}
    end
  end

  # Runs a NIF that answers later with one `{tag, {:done, result}}`.
  defp background(start) do
    tag = make_ref()

    case start.(tag) do
      {:ok, :ok} ->
        receive do
          {^tag, {:done, {:ok, value}}} -> {:ok, value}
          {^tag, {:done, {:error, {kind, message}}}} -> {:error, %Error{kind: kind, message: message}}
        end

      {:error, _} = error ->
        Error.wrap(error)
    end
  end

  @artifacts "/artifacts"

  @doc """
  Where the artifact `artifact_name` of task `task_name` is stored and read:
  `/artifacts/<task>/<name>`, on the artifact claim (`state.artifact_pvc`): the Job of a
  task declaring `outputs` or `task_inputs` mounts its own directory of this run's,
  `sykli-tasks/<run>/<task>` on the claim, at `/artifacts/<task>`. A producing task writes
  its artifact there; `copy_artifact/4` copies it on the claim, within the run.

  Both names are relative paths (`dist/app` is fine): an empty, absolute, `..` or `.`
  component, an empty component or a NUL byte raises `ArgumentError` naming it.
  """
  @spec artifact_path(String.t(), String.t(), String.t(), map()) :: String.t()
  def artifact_path(task_name, artifact_name, _workdir, _state) do
    Enum.join(
      [@artifacts, artifact_name!("task name", task_name), artifact_name!("artifact name", artifact_name)],
      "/"
    )
  end

  defp artifact_name!(what, name) do
    cond do
      not is_binary(name) or name == "" ->
        raise ArgumentError, "invalid #{what} #{inspect(name)}: it must be a non-empty string"

      String.contains?(name, <<0>>) ->
        raise ArgumentError, "invalid #{what} #{inspect(name)}: it contains a NUL byte"

      String.starts_with?(name, "/") ->
        raise ArgumentError, "invalid #{what} #{inspect(name)}: it must be relative, not absolute"

      Enum.any?(String.split(name, "/"), &(&1 in ["", ".", ".."])) ->
        raise ArgumentError,
              "invalid #{what} #{inspect(name)}: no \"..\", \".\" or empty components"

      true ->
        name
    end
  end

  @doc """
  Copies an artifact (a file or a directory tree) from `source` to `dest`, both paths as
  `artifact_path/4` gives them (below `/artifacts/`), in this run's directories of the
  artifact claim (`state.run_id`), in the cluster:
  the claim's receiver pod (`sykli-sync-<claim>-<hash>`, as for the PVC strategy, image
  `sync_image`) runs `sykli-sync copy`, which follows no symlink out of the claim and leaves
  none pointing out of it. Nothing crosses the laptop.

  `{:error, %SykliK8s.Error{kind: :invalid_option}}` for a path outside `/artifacts/` (before
  any API call), `kind: :not_found` when the claim or the source does not exist.
  """
  @spec copy_artifact(String.t(), String.t(), String.t(), map()) :: :ok | {:error, Error.t()}
  def copy_artifact(source, dest, _workdir, state) do
    with :ok <- artifact_location(source),
         :ok <- artifact_location(dest),
         {:ok, claim} <- artifact_claim!(state),
         {:ok, cluster} <- connected(state),
         {:ok, json} <-
           JSON.encode(
             compact(%{
               namespace: state.namespace,
               claim: claim,
               image: state[:sync_image],
               from: source,
               to: dest,
               run_id: state.run_id
             })
           ),
         {:ok, _report} <- background(&Native.k8s_copy_artifact(cluster, json, &1)) do
      :ok
    end
  end

  defp artifact_location(path) do
    rel =
      is_binary(path) && String.starts_with?(path, @artifacts <> "/") &&
        String.replace_prefix(path, @artifacts <> "/", "")

    if rel && rel != "" && not String.contains?(rel, <<0>>) &&
         not Enum.any?(String.split(rel, "/"), &(&1 in ["", ".", ".."])) do
      :ok
    else
      {:error,
       %Error{
         kind: :invalid_option,
         message:
           "artifact path #{inspect(path)} is not below #{@artifacts}/ (use artifact_path/4: " <>
             "relative names without \"..\")"
       }}
    end
  end

  # `artifact_pvc: false` in the config: no artifact claim anywhere.
  defp artifact_claim(state) do
    case state[:artifact_pvc] do
      claim when is_binary(claim) -> claim
      _ -> nil
    end
  end

  defp artifact_claim!(state) do
    case artifact_claim(state) do
      nil ->
        {:error,
         %Error{
           kind: :invalid_config,
           message: "artifact_pvc is #{inspect(state[:artifact_pvc])}: there is no artifact claim to copy on"
         }}

      claim ->
        {:ok, claim}
    end
  end

  defp connected(%{cluster: cluster}) when cluster != nil, do: {:ok, cluster}

  defp connected(_state),
    do:
      {:error,
       %Error{kind: :invalid_option, message: "not connected to a cluster (a dry run?): nothing to copy on"}}

  @doc "Cancels a run: its Job is deleted, and `await/2` returns `kind: :cancelled`."
  @spec cancel(map()) :: :ok
  def cancel(%{handle: handle}), do: Native.k8s_cancel(handle)

  defp default_printer(task) do
    name = to_string(task[:name] || task["name"])

    fn
      {:log, _container, line} -> IO.puts("[#{name}] #{line}")
      _ -> :ok
    end
  end

  @doc """
  A Job name unique to the run: `sykli-<task>-<run id>`, a DNS-1123 label of at most 63
  characters however long the task name is.
  """
  @spec job_name(String.t(), String.t()) :: String.t()
  def job_name(task_name, run_id) when is_binary(task_name) and is_binary(run_id),
    do: Native.k8s_job_name(task_name, run_id)

  # A retried task's later attempts get Jobs of their own: `<run id>-a2`, `-a3`…
  defp attempt_id(run_id, attempt) when is_integer(attempt) and attempt > 1, do: "#{run_id}-a#{attempt}"
  defp attempt_id(run_id, _attempt), do: run_id

  @doc "A short random run id (lower-case letters and digits)."
  @spec run_id() :: String.t()
  def run_id do
    for _ <- 1..6, into: "", do: <<Enum.random(~c"abcdefghijklmnopqrstuvwxyz0123456789")>>
  end

  @doc """
  The Job for `task` (a task as the pipeline JSON has it: string or atom keys), named
  `job_name`, as a map with string keys, exactly as it would be submitted.

  `opts`: `:resources` (the pipeline's resources, by id), `:run_id`, `:allow_dirty`.
  A dirty git context is refused (`kind: :dirty_workdir`) unless `allow_dirty: true`.
  """
  @spec build_job_manifest(map(), String.t(), map(), keyword()) :: {:ok, map()} | {:error, Error.t()}
  def build_job_manifest(task, job_name, state, opts \\ []) when is_map(task) and is_binary(job_name) do
    with {:ok, options} <- build_options(state, opts),
         {:ok, task_json} <- JSON.encode(task),
         {:ok, resources_json} <- JSON.encode(Keyword.get(opts, :resources, %{})),
         {:ok, options_json} <- JSON.encode(options),
         {:ok, job_json} <-
           Error.wrap(Native.k8s_build_job(task_json, resources_json, job_name, options_json)) do
      JSON.decode(job_json)
    end
  end

  @doc """
  What would stop the pipeline's Jobs from starting on the connected cluster: a missing
  namespace (unless `create_namespace`), Secret, ConfigMap, claim or key, one line each.
  Creates nothing. `opts` as for `render_pipeline/4`.
  """
  @spec check(String.t(), map(), keyword()) :: {:ok, [String.t()]} | {:error, Error.t()}
  def check(pipeline_json, %{cluster: cluster} = state, opts \\ []) when cluster != nil do
    with {:ok, list} <- render_pipeline(pipeline_json, state, :json, opts),
         {:ok, %{"items" => jobs}} <- JSON.decode(list),
         {:ok, jobs_json} <- JSON.encode(jobs) do
      Error.wrap(Native.k8s_check_jobs(cluster, jobs_json, Map.get(state, :create_namespace) == true))
    end
  end

  @doc """
  Every Job of a pipeline (its JSON text), rendered as `:yaml` (multi-document) or `:json`
  (a `v1/List`), kubectl-ready. `opts` as for `build_job_manifest/4`.
  """
  @spec render_pipeline(String.t(), map(), :yaml | :json, keyword()) ::
          {:ok, String.t()} | {:error, Error.t()}
  def render_pipeline(pipeline_json, state, format, opts \\ []) when format in [:yaml, :json] do
    with {:ok, options} <- build_options(state, opts),
         {:ok, options_json} <- JSON.encode(options) do
      Error.wrap(Native.k8s_render_pipeline(pipeline_json, options_json, Atom.to_string(format)))
    end
  end

  defp build_options(state, opts) do
    with {:ok, ctx} <- git_context(state),
         {:ok, pvc} <- pvc_options(state, ctx),
         {:ok, s3} <- s3_options(state, ctx) do
      allow_dirty = Keyword.get(opts, :allow_dirty, Map.get(state, :allow_dirty, false))

      {:ok,
       compact(%{
         namespace: Map.get(state, :namespace, "sykli"),
         namespace_override: if(Map.get(state, :namespace_from_flag), do: state.namespace),
         run_id: Keyword.get(opts, :run_id, Map.get(state, :run_id)),
         default_image: Map.get(state, :default_image),
         ttl_seconds_after_finished: Map.get(state, :ttl_seconds_after_finished),
         artifact_pvc: artifact_claim(state),
         collect_outputs: Map.get(state, :collect_outputs),
         sync_image: state[:sync_image],
         workspace_size_limit: state[:workspace_size_limit],
         source: %{
           pvc: pvc,
           s3: s3,
           strategy: Map.get(state, :source_strategy, :git_clone),
           url: ctx.url,
           sha: ctx.sha,
           branch: ctx.branch,
           dirty: ctx.dirty,
           dirty_summary: dirty_summary(ctx),
           allow_dirty: allow_dirty,
           clone: %{
             depth: Map.get(state, :clone_depth) |> depth(),
             image: Map.get(state, :git_image),
             attempts: Map.get(state, :clone_attempts),
             backoff_seconds: Map.get(state, :clone_backoff),
             access: access(state, ctx)
           }
         }
       })}
    end
  end

  # How the clone reaches the repository: the Secrets and ConfigMaps by name (never their
  # contents), submodules, LFS (on by itself when the repository uses it), sparse paths.
  defp access(state, ctx) do
    %{
      ssh:
        state[:git_ssh_secret] &&
          %{
            secret: state.git_ssh_secret,
            key: state[:git_ssh_key],
            known_hosts: object_key(state[:git_known_hosts], state[:git_known_hosts_key]),
            accept_new: state[:git_ssh_accept_new] == true
          },
      token:
        state[:git_token_secret] &&
          %{
            secret: state.git_token_secret,
            key: state[:git_token_key],
            username_key: state[:git_token_username_key],
            username: state[:git_token_username]
          },
      credentials:
        state[:git_credentials_secret] &&
          %{secret: state.git_credentials_secret, key: state[:git_credentials_key]},
      ca_bundle: object_key(state[:git_ca_bundle], state[:git_ca_bundle_key]),
      proxy:
        (state[:git_http_proxy] || state[:git_https_proxy]) &&
          %{http: state[:git_http_proxy], https: state[:git_https_proxy], no_proxy: state[:git_no_proxy]},
      submodules:
        case Map.get(state, :submodules, false) do
          true -> "on"
          :recursive -> "recursive"
          _ -> "off"
        end,
      submodule_depth: depth(state[:submodule_depth]),
      lfs:
        case Map.get(state, :lfs, :auto) do
          :auto -> ctx.lfs == true
          other -> other == true
        end,
      # Detection sees only what is checked out here: the clone still fails on a pointer.
      lfs_check: Map.get(state, :lfs, :auto) == :auto,
      sparse: state[:sparse] || []
    }
  end

  # Before an upload (a dry run), the tree is the one the working tree would upload as.
  defp pvc_options(%{source_strategy: :pvc} = state, ctx) do
    bundle = state[:source_sync] == :git

    with {:ok, %{tree: tree}} <- tree(state, ctx),
         {:ok, claim} <- claim(state) do
      {:ok,
       %{
         claim: claim,
         tree: tree,
         image: state[:sync_image],
         node: state[:pvc_node],
         mount: to_string(Map.get(state, :source_mount, :copy)),
         sync_back: state[:sync_back] == true,
         bundle: if(bundle, do: %{sha: ctx.sha, git_image: state[:git_image]})
       }}
    end
  end

  defp pvc_options(_state, _ctx), do: {:ok, nil}

  # Before the upload (the pre-flight build of every Job), the archive is not known yet: a
  # placeholder shows the Jobs are buildable; they are built again once it is published.
  # No URL: the fetch reads it from the Job's own Secret, signed at submission.
  defp s3_options(%{source_strategy: :s3} = state, ctx) do
    with {:ok, s3} <- s3_settings(state) do
      zero = String.duplicate("0", 64)
      p = state[:s3_published] || %{sha256: zero, size: 0, tree: zero, key: nil}

      {:ok,
       %{
         sha256: p.sha256,
         size: p.size,
         tree: p.tree,
         key: p.key,
         image: state[:sync_image],
         bundle: if(state[:source_sync] == :git, do: %{sha: ctx.sha, git_image: state[:git_image]}),
         # The fetch trusts the bundle's CAs too (the certificates travel in the Job's spec).
         ca_bundle: s3[:ca_bundle]
       }}
    end
  end

  defp s3_options(_state, _ctx), do: {:ok, nil}

  defp tree(%{pvc_tree: tree}, _ctx) when is_binary(tree), do: {:ok, %{tree: tree}}

  defp tree(%{source_sync: :git} = state, ctx),
    do: with_bundle_dir(state, ctx, &Error.wrap(Native.k8s_source_tree(&1, [], true)))

  defp tree(state, ctx),
    do: Error.wrap(Native.k8s_source_tree(ctx.root, state[:source_exclude] || [], false))

  # `source_sync: :git`: HEAD as a git bundle, made for `fun` (which gets its directory)
  # in a fresh private directory that is removed once `fun` returns, however it ends.
  # Nothing in a shared /tmp is reused by name or followed. Packed on one thread, so the
  # same HEAD gives the same bytes (and tree): an unchanged HEAD still uploads nothing.
  defp with_bundle_dir(%{source_sync: :git}, ctx, fun) do
    with {:ok, dir} <- bundle_dir() do
      try do
        args = [
          "-c",
          "pack.threads=1",
          "-C",
          ctx.root,
          "bundle",
          "create",
          "-q",
          Path.join(dir, "sykli.bundle"),
          "HEAD"
        ]

        case System.cmd("git", args, stderr_to_stdout: true) do
          {_, 0} -> fun.(dir)
          {out, _} -> {:error, %Error{kind: :git, message: "git bundle create failed: #{String.trim(out)}"}}
        end
      after
        File.rm_rf(dir)
      end
    end
  end

  defp with_bundle_dir(_state, _ctx, fun), do: fun.(nil)

  # A directory of this user only: a random name made with mkdir (which fails on anything
  # there, a link included), closed to others before anything is written, and checked
  # still empty (nothing slipped in before the chmod, whatever the umask).
  defp bundle_dir(attempts \\ 5) do
    tmp = System.tmp_dir!()
    dir = Path.join(tmp, "sykli-bundle-" <> Base.url_encode64(:rand.bytes(12), padding: false))

    fail = fn why ->
      {:error,
       %Error{
         kind: :io,
         message:
           "cannot make a private directory for the git bundle in #{tmp}: #{why} " <>
             "(set TMPDIR to a directory of your own)"
       }}
    end

    case File.mkdir(dir) do
      :ok ->
        with :ok <- File.chmod(dir, 0o700),
             {:ok, %File.Stat{type: :directory, mode: mode}} when Bitwise.band(mode, 0o077) == 0 <-
               File.lstat(dir),
             {:ok, []} <- File.ls(dir) do
          {:ok, dir}
        else
          _ ->
            File.rm_rf(dir)
            fail.("#{dir} could not be closed to others, or something appeared in it")
        end

      {:error, :eexist} when attempts > 1 ->
        bundle_dir(attempts - 1)

      {:error, reason} ->
        fail.(:file.format_error(reason))
    end
  end

  defp object_key(nil, _key), do: nil
  defp object_key("secret/" <> name, key), do: %{kind: "secret", name: name, key: key}
  defp object_key("configmap/" <> name, key), do: %{kind: "config_map", name: name, key: key}
  defp object_key(name, key), do: %{kind: "config_map", name: name, key: key}

  defp git_context(%{git_context: %GitContext{} = ctx}), do: {:ok, ctx}
  defp git_context(state), do: Git.detect(Map.get(state, :workdir, File.cwd!()))

  defp depth(:full), do: "full"
  defp depth(other), do: other

  defp dirty_summary(%GitContext{dirty: false}), do: nil

  defp dirty_summary(%GitContext{changes: c}) do
    shown = c.paths |> Enum.take(10) |> Enum.map_join(", ", &"#{String.trim(&1.status)} #{&1.path}")
    more = if c.total > 10, do: " and #{c.total - 10} more", else: ""
    "#{c.total} #{if c.total == 1, do: "change", else: "changes"}: #{shown}#{more}"
  end

  defp compact(map) when is_map(map) do
    for {k, v} <- map, v != nil, into: %{}, do: {k, compact(v)}
  end

  defp compact(other), do: other
end
