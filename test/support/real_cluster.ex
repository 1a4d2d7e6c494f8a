defmodule SykliK8s.Test.RealCluster do
  @moduledoc """
  The real control plane (`sykli-kube up`: etcd, kube-apiserver, kube-controller-manager,
  kube-scheduler of Kubernetes v1.37.2 and two virtual-kubelet nodes running pods through
  `sykli-pod-runner`) for end-to-end tests. Started once per `mix test` run, on first use,
  and shared by every suite: each test isolates by its own namespace (`namespace!/1`).
  It stops when the VM exits: its stdin is the port, which closes with the VM.

  `info/0` holds "kubeconfig" (the
  admin's current context, and `sykli-test-readonly`, an account that may read and not
  write), "url", plus "ca", "dir", "web_port" (where `SykliRun.web_image/0` listens) and
  "hostile_sentinel" (see `hostile_image/0`).
  The admin calls here authenticate with the admin kubeconfig's client certificate (the
  real API server has no static admin token).
  """

  use GenServer

  import ExUnit.Assertions

  alias SykliK8s.Test.Cluster

  @sync_image "ghcr.io/sykli/sync:test"
  @hostile_image "ghcr.io/sykli/sync:hostile"

  @doc "The sync helper image the nodes map to the host build of sykli-sync."
  def sync_image, do: @sync_image

  @doc """
  The image the nodes map to `sykli-hostile-sync` (at /usr/local/bin/sykli-sync), with the
  file `info["hostile_sentinel"]` at /etc/sykli-hostile/sentinel: one file for the run, so
  only one test at a time may use this image (k8s_sync_back_hostile_test's, in order).
  """
  def hostile_image, do: @hostile_image

  @doc "The running plane's info, starting it when this is the run's first use."
  def info do
    pid =
      case GenServer.start(__MODULE__, nil, name: __MODULE__) do
        {:ok, pid} -> pid
        {:error, {:already_started, pid}} -> pid
        {:error, reason} -> flunk("sykli-kube up did not start: #{inspect(reason)}")
      end

    case GenServer.call(pid, :info, 180_000) do
      {:ok, info} -> info
      {:error, message} -> flunk(message)
    end
  end

  @doc """
  A fresh namespace name, `prefix-<random>`: tests of every suite share the plane (and run
  async), so none may reuse another's namespace. It is not created.
  """
  def namespace!(prefix \\ "t"),
    do: "#{prefix}-#{Base.encode32(:crypto.strong_rand_bytes(5), case: :lower, padding: false)}"

  @impl true
  def init(nil) do
    # No test process owns the plane: it outlives each test and stops with the VM.
    dir = SykliK8s.Test.GitRepo.new_dir!("sykli-real-cluster")
    log = Path.join(dir, "sykli-kube.log")
    bin = sykli_kube_bin!()
    runner = debug_bin!("sykli-pod-runner")
    sync = debug_bin!("sykli-sync")
    hostile = debug_bin!("sykli-hostile-sync")
    sentinel = Path.join(dir, "hostile-sentinel")
    File.write!(sentinel, "")
    web_port = SykliK8s.Test.SykliRun.free_port()
    web = SykliK8s.JSON.encode!(SykliK8s.Test.SykliRun.web_entrypoint(web_port))

    args =
      ["up", "--dir", Path.join(dir, "cluster"), "--etcd-unsafe-no-fsync", "--nodes", "2"] ++
        ["--node-runner", runner] ++
        Enum.map(
          [
            "--deny-image=registry.invalid/*",
            "--image-pull-backoff=500ms",
            "--runner-arg=--image-file=#{@sync_image}=#{sync}:/usr/local/bin/sykli-sync",
            "--runner-arg=--image-file=#{@hostile_image}=#{hostile}:/usr/local/bin/sykli-sync",
            "--runner-arg=--image-file=#{@hostile_image}=#{sentinel}:/etc/sykli-hostile/sentinel",
            "--runner-arg=--image-entrypoint=#{SykliK8s.Test.SykliRun.web_image()}=#{web}"
          ],
          &("--node-arg=" <> &1)
        )

    # Through sh, the values as arguments: stderr (the launcher's progress) to a file, and
    # the directory removed once the plane has stopped cleanly (kept, with the log, if not).
    script = ~s(dir="$1"; shift; "$@" 2>"$dir/sykli-kube.log"; s=$?; [ $s -ne 0 ] || rm -rf "$dir"; exit $s)

    port =
      Port.open({:spawn_executable, "/bin/sh"}, [
        :binary,
        {:line, 65_536},
        :exit_status,
        args: ["-c", script, "sh", dir, bin | args]
      ])

    receive do
      {^port, {:data, {:eol, line}}} ->
        up = SykliK8s.JSON.decode!(line)

        admin = %{
          "kubeconfig" => up["kubeconfig"],
          "admin_kubeconfig" => up["kubeconfig"],
          "url" => up["server"],
          "ca" => up["ca"],
          "nodes" => up["nodes"],
          "dir" => dir,
          "web_port" => web_port,
          "hostile_sentinel" => sentinel
        }

        {:ok, {:ok, Map.put(admin, "kubeconfig", kubeconfig_with_readonly!(admin))}}

      {^port, {:exit_status, status}} ->
        {:ok, {:error, "sykli-kube up exited with #{status}:\n#{File.read!(log)}"}}
    after
      150_000 -> {:ok, {:error, "sykli-kube up was not ready within 150s:\n#{File.read!(log)}"}}
    end
  end

  # The admin's kubeconfig plus the context `sykli-test-readonly`:
  # a ServiceAccount bound to the built-in ClusterRole `view`, which may read (namespaces
  # included) and write nothing, with a TokenRequest token.
  defp kubeconfig_with_readonly!(info) do
    sa = "sykli-test-readonly"
    api_post!(info, "/api/v1/namespaces/default/serviceaccounts", %{metadata: %{name: sa}})

    api_post!(info, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", %{
      metadata: %{name: sa},
      roleRef: %{apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "view"},
      subjects: [%{kind: "ServiceAccount", name: sa, namespace: "default"}]
    })

    %{"status" => %{"token" => token}} =
      api_post!(info, "/api/v1/namespaces/default/serviceaccounts/#{sa}/token", %{
        spec: %{expirationSeconds: 86_400}
      })

    yaml = File.read!(info["admin_kubeconfig"])

    cluster = %{
      "server" => info["url"],
      "certificate-authority-data" => yaml_field!(yaml, "certificate-authority-data")
    }

    admin = %{
      "client-certificate-data" => yaml_field!(yaml, "client-certificate-data"),
      "client-key-data" => yaml_field!(yaml, "client-key-data")
    }

    path = Path.join(info["dir"], "kubeconfig.json")

    File.write!(
      path,
      SykliK8s.JSON.encode!(%{
        "apiVersion" => "v1",
        "kind" => "Config",
        "clusters" => [%{"name" => "sykli-kube", "cluster" => cluster}],
        "users" => [
          %{"name" => "sykli-admin", "user" => admin},
          %{"name" => sa, "user" => %{"token" => token}}
        ],
        "contexts" => [
          %{"name" => "sykli-kube", "context" => %{"cluster" => "sykli-kube", "user" => "sykli-admin"}},
          %{"name" => sa, "context" => %{"cluster" => "sykli-kube", "user" => sa, "namespace" => "default"}}
        ],
        "current-context" => "sykli-kube"
      })
    )

    File.chmod!(path, 0o600)
    path
  end

  defp yaml_field!(yaml, name) do
    [_, data] = Regex.run(~r/^\s*#{name}: (\S+)$/m, yaml) || flunk("no #{name} in the admin kubeconfig")
    data
  end

  @impl true
  def handle_call(:info, _from, answer), do: {:reply, answer, answer}

  @impl true
  def handle_info({_port, {:exit_status, status}}, answer),
    do: {:stop, {:sykli_kube_exited, status}, answer}

  def handle_info(_other, answer), do: {:noreply, answer}

  defp sykli_kube_bin! do
    bin = System.get_env("SYKLI_KUBE_BIN") || Path.join(System.user_home!(), ".cache/sykli/bin/sykli-kube")
    assert File.exists?(bin), "#{bin} is missing: build it with tools/kube/build.sh"
    bin
  end

  defp debug_bin!(name) do
    path = Path.join([Cluster.target_dir(), "debug", name])
    assert File.exists?(path), "#{path} is missing: cargo build -p sykli_testkit -p sykli_sync --bins"
    path
  end

  @doc """
  A claim the real PV binder binds: a hostPath PersistentVolume over a fresh host
  directory (mode 0777: pods run as any user), pre-bound to the PersistentVolumeClaim
  `name` (1Gi, access `mode`, storageClassName "") in `namespace`. Returns the host
  directory, where a test inspects what pods wrote to the claim.
  """
  def claim!(info, namespace, name, mode \\ "ReadWriteMany") do
    host = Path.join([info["dir"], "claims", "#{namespace}-#{name}"])
    File.mkdir_p!(host)
    File.chmod!(host, 0o777)
    pv = "pv-#{namespace}-#{name}" |> String.slice(0, 253)

    api_post!(info, "/api/v1/persistentvolumes", %{
      metadata: %{name: pv},
      spec: %{
        capacity: %{storage: "1Gi"},
        accessModes: [mode],
        persistentVolumeReclaimPolicy: "Retain",
        storageClassName: "",
        hostPath: %{path: host},
        claimRef: %{namespace: namespace, name: name}
      }
    })

    api_post!(info, "/api/v1/namespaces/#{namespace}/persistentvolumeclaims", %{
      metadata: %{name: name},
      spec: %{
        accessModes: [mode],
        storageClassName: "",
        volumeName: pv,
        resources: %{requests: %{storage: "1Gi"}}
      }
    })

    host
  end

  @doc "Creates the namespace `name` (as an admin would, before a run that does not create it)."
  def create_namespace!(info, name), do: api_post!(info, "/api/v1/namespaces", %{metadata: %{name: name}})

  @doc "GET from the API as the admin (TLS verified against the plane's CA)."
  def api_get!(info, path) do
    {status, body} = request!(info, :get, path, nil)
    assert status == 200, "GET #{path}: #{status} #{body}"
    SykliK8s.JSON.decode!(body)
  end

  @doc "POST a JSON object to the API as the admin; returns the decoded answer."
  def api_post!(info, path, object) do
    {status, body} = request!(info, :post, path, SykliK8s.JSON.encode!(object))
    assert status in 200..299, "POST #{path}: #{status} #{body}"
    SykliK8s.JSON.decode!(body)
  end

  @doc "The names of the Jobs in `namespace` (none when the namespace does not exist)."
  def jobs(info, namespace) do
    %{"items" => items} = api_get!(info, "/apis/batch/v1/namespaces/#{namespace}/jobs")
    Enum.map(items, & &1["metadata"]["name"])
  end

  defp request!(info, method, path, body) do
    {:ok, _} = Application.ensure_all_started(:inets)
    {:ok, _} = Application.ensure_all_started(:ssl)
    %{ca: ca, cert: cert, key: key} = credentials!(info)
    headers = [{~c"connection", ~c"close"}]

    ssl = [
      verify: :verify_peer,
      cacerts: ca,
      cert: cert,
      key: key,
      reuse_sessions: false,
      server_name_indication: ~c"localhost"
    ]

    url = String.to_charlist(info["url"] <> path)
    request = if body, do: {url, headers, ~c"application/json", body}, else: {url, headers}
    {:ok, {{_, status, _}, _, answer}} = :httpc.request(method, request, [ssl: ssl], body_format: :binary)
    {status, answer}
  end

  # The admin kubeconfig (YAML with the CA, client certificate and key embedded).
  defp credentials!(info) do
    yaml = File.read!(info["admin_kubeconfig"])
    pem = fn name -> :public_key.pem_decode(Base.decode64!(yaml_field!(yaml, name))) end
    [{:Certificate, cert, _}] = pem.("client-certificate-data")
    [{key_type, key, _}] = pem.("client-key-data")
    ca = for {:Certificate, der, _} <- pem.("certificate-authority-data"), do: der
    %{ca: ca, cert: cert, key: {key_type, key}}
  end
end
