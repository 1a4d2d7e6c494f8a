defmodule Sykli.Target.K8s do
  @moduledoc """
  sykli's Kubernetes target, as sykli's own executor calls it
  (`Sykli.Target.Behaviour`): each task runs as a `batch/v1` Job whose task container finds
  the exact commit (or, with the PVC and S3 strategies, the working tree) at its mount
  paths — `mount(src, "/app")` is the repository at `/app`.

  Settings sykli's CLI has no flag for come from the repository's `.sykli/config.exs`
  (`config :sykli, :k8s, …`) and the environment: `SYKLI_SOURCE_STRATEGY`,
  `SYKLI_GIT_REF`, `SYKLI_K8S_CONTEXT`, `SYKLI_K8S_NAMESPACE`, `KUBECONFIG`. Progress and
  every task's log go to stderr (sykli discards stdout during a run).

  The work is `SykliK8s.Boundary`'s (what crosses from sykli) and `SykliK8s.Target`'s (the
  engine this project's own command uses too).
  """

  alias SykliK8s.{Boundary, Target}

  # Declared when sykli's behaviour is there to declare (sykli compiles it after this
  # dependency; the test harness compiles it alongside).
  if Code.ensure_compiled(Sykli.Target.Behaviour) == {:module, Sykli.Target.Behaviour} do
    @behaviour Sykli.Target.Behaviour
  end

  @typedoc "The run's state, shared read-only by every task process."
  @type state :: %{
          required(:workdir) => String.t(),
          required(:namespace) => String.t(),
          optional(atom()) => term()
        }

  @spec name() :: String.t()
  def name, do: "k8s"

  @doc "Whether a cluster is reachable with the default kubeconfig: `{:ok, %{server, …}}`."
  @spec available?() :: {:ok, map()} | {:error, SykliK8s.Error.t()}
  def available?, do: Target.available?()

  @doc """
  Connects and decides the run's source before any task: sykli's keywords (`git_context`,
  `workdir` as typed, `timeout` in ms — the default for tasks without their own —,
  `git_ssh_secret`, `git_token_secret`), then `.sykli/config.exs` and the environment. A
  dirty context sykli let through (`--allow-dirty`) is built as HEAD, with a warning.
  """
  @spec setup(keyword()) :: {:ok, state()} | {:error, SykliK8s.Error.t()}
  def setup(opts), do: Boundary.setup(opts)

  @spec teardown(state()) :: :ok
  def teardown(state), do: Boundary.teardown(state)

  @doc """
  Runs `task` (a `%Sykli.Graph.Task{}`) as a Job and waits for it: `{:ok, logs}`, or
  `{:error, %Sykli.Error{}}` with the logs, the exit code and the one-line reason. Each call
  is a fresh Job (sykli retries by calling again); `task.timeout` is enforced here.
  """
  @spec run_task(struct(), state(), keyword()) :: {:ok, String.t()} | {:error, term()}
  def run_task(task, state, run_opts), do: Boundary.run_task(task, state, run_opts)

  @doc """
  A Secret's value: `"name"` reads key `value` of Secret `name` in the run's namespace,
  `"name/key"` reads `key`; when the Secret is missing or the API unreachable, the
  environment variable `ref`.
  """
  @spec resolve_secret(String.t(), state()) :: {:ok, String.t()} | {:error, :not_found}
  def resolve_secret(ref, state), do: Boundary.resolve_secret(ref, state)

  @doc """
  A claim tasks can share: `sykli-cache-NAME` (`type: :cache`) or `sykli-dir-NAME`, of
  `size` (default `"1Gi"`) and `storage_class`, created unless it exists.
  """
  @spec create_volume(String.t(), map(), state()) :: {:ok, map()} | {:error, SykliK8s.Error.t()}
  def create_volume(name, opts, state), do: Boundary.create_volume(name, opts, state)

  @doc "Where task `task_name`'s artifact `name` lives on the artifact claim."
  @spec artifact_path(String.t(), String.t(), String.t(), state()) :: String.t()
  def artifact_path(task_name, name, workdir, state),
    do: Target.artifact_path(task_name, name, workdir, state.engine)

  @doc "Copies an artifact on the artifact claim, in the cluster."
  @spec copy_artifact(String.t(), String.t(), String.t(), state()) :: :ok | {:error, term()}
  def copy_artifact(source, dest, workdir, state), do: Boundary.copy_artifact(source, dest, workdir, state)

  @doc "Services run as native sidecars of the task's own Job: nothing starts here."
  @spec start_services(String.t(), list(), state()) :: {:ok, nil}
  def start_services(_task_name, _services, _state), do: {:ok, nil}

  @spec stop_services(term(), state()) :: :ok
  def stop_services(_info, _state), do: :ok

  @doc "`exit_code` criteria; other kinds are answered unsupported, per criterion."
  def evaluate_success_criteria(task, criteria, state, run_opts),
    do: Boundary.evaluate_success_criteria(task, criteria, state, run_opts)
end
