defmodule SykliK8s.Test.Cluster do
  @moduledoc """
  The strict test cluster (native/sykli_testcluster) and loopback git servers, started as
  real processes for end-to-end tests. Each stops when its port closes (stdin closes).
  """

  import ExUnit.Assertions

  def target_dir do
    System.get_env("CARGO_TARGET_DIR") || Path.join(System.user_home!(), ".cache/sykli/cargo-target")
  end

  defp bin!(name) do
    path = Path.join([target_dir(), "debug", name])
    assert File.exists?(path), "#{path} is missing: cargo build -p sykli_testcluster -p sykli_testkit --bins"
    path
  end

  # Starts a program that prints one JSON line when ready and runs until stdin closes.
  defp start_program!(name, args) do
    port = Port.open({:spawn_executable, bin!(name)}, [:binary, {:line, 65_536}, :exit_status, args: args])
    ExUnit.Callbacks.on_exit(fn -> if Port.info(port), do: Port.close(port) end)

    receive do
      {^port, {:data, {:eol, line}}} -> {port, SykliK8s.JSON.decode!(line)}
      {^port, {:exit_status, status}} -> flunk("#{name} exited with #{status} before it was ready")
    after
      60_000 -> flunk("#{name} was not ready within 60s")
    end
  end

  @doc "A test cluster; returns its JSON line (url, kubeconfig, admin_token) plus a CA file."
  def start!(dir, args \\ []) do
    {_port, info} = start_program!("sykli-test-cluster", ["--dir", dir] ++ args)
    info
  end

  @doc """
  The test cluster arguments that make `image` the host build of `sykli-sync` (at
  /usr/local/bin/sykli-sync, as in the real image).
  """
  def sync_image_file(image),
    do: [
      "--image-file",
      "#{image}=#{Path.join([target_dir(), "debug", "sykli-sync"])}:/usr/local/bin/sykli-sync"
    ]

  @doc """
  Writes `dir/kubeconfig` for `server` (TLS unverified, a placeholder token, `namespace` as
  the context's) and returns its path. The default, port 1 on loopback, is a cluster no API
  call reaches: a test of what is refused before any call fails with a connection error if
  a call is made.
  """
  def kubeconfig!(dir, server \\ "https://127.0.0.1:1", namespace \\ "ci") do
    path = Path.join(dir, "kubeconfig")

    File.write!(path, """
    apiVersion: v1
    kind: Config
    clusters: [{name: c, cluster: {server: "#{server}", insecure-skip-tls-verify: true}}]
    users: [{name: u, user: {token: t0ken}}]
    contexts: [{name: ctx, context: {cluster: c, user: u, namespace: #{namespace}}}]
    current-context: ctx
    """)

    path
  end

  @doc "Creates the PersistentVolumeClaim `name` (1Gi, access `mode`) in `namespace`."
  def claim!(info, namespace, name, mode \\ "ReadWriteMany") do
    api_post!(info, "/api/v1/namespaces/#{namespace}/persistentvolumeclaims", %{
      metadata: %{name: name},
      spec: %{accessModes: [mode], resources: %{requests: %{storage: "1Gi"}}}
    })
  end

  @doc "A git server for the bare repositories under `root`; returns the URL base."
  def git_server!(root, args \\ []) do
    {_port, %{"url_base" => base}} = start_program!("sykli-git-server", ["--root", root] ++ args)
    base
  end

  @doc "A program of the test kit (`sykli-git-sshd`, `sykli-http-proxy`, …); returns its JSON line."
  def program!(name, args \\ []) do
    {_port, info} = start_program!(name, args)
    info
  end

  @doc "GET from the test cluster's API as the admin (TLS, verified against its CA)."
  def api_get!(info, path) do
    {200, body} = request!(info, :get, path, nil)
    SykliK8s.JSON.decode!(body)
  end

  @doc "POST a JSON object to the test cluster's API as the admin; returns the decoded answer."
  def api_post!(info, path, object) do
    {status, body} = request!(info, :post, path, SykliK8s.JSON.encode!(object))
    assert status in 200..299, "POST #{path}: #{status} #{body}"
    SykliK8s.JSON.decode!(body)
  end

  defp request!(info, method, path, body) do
    {:ok, _} = Application.ensure_all_started(:inets)
    {:ok, _} = Application.ensure_all_started(:ssl)
    # No pooled connection outlives its cluster (a later one may get the same port).
    headers = [
      {~c"authorization", ~c"Bearer " ++ String.to_charlist(info["admin_token"])},
      {~c"connection", ~c"close"}
    ]

    # The CA in memory and no session reuse: clusters of other tests come and go on the
    # same loopback ports, and OTP caches CA files and sessions across requests.
    cacerts = for {:Certificate, der, _} <- :public_key.pem_decode(ca_pem!(info)), do: der

    ssl = [
      verify: :verify_peer,
      cacerts: cacerts,
      reuse_sessions: false,
      server_name_indication: ~c"localhost"
    ]

    url = String.to_charlist(info["url"] <> path)
    request = if body, do: {url, headers, ~c"application/json", body}, else: {url, headers}
    {:ok, {{_, status, _}, _, answer}} = :httpc.request(method, request, [ssl: ssl], body_format: :binary)
    {status, answer}
  end

  # Read from the kubeconfig at each request, never cached in a file a later cluster in a
  # reused directory could find.
  defp ca_pem!(info) do
    # The test cluster writes its kubeconfig as JSON (which is YAML too).
    %{"clusters" => [%{"cluster" => %{"certificate-authority-data" => data}} | _]} =
      SykliK8s.JSON.decode!(File.read!(info["kubeconfig"]))

    Base.decode64!(data)
  end

  @doc "The names of the Jobs in `namespace` (none when the namespace does not exist)."
  def jobs(info, namespace) do
    %{"items" => items} = api_get!(info, "/apis/batch/v1/namespaces/#{namespace}/jobs")
    Enum.map(items, & &1["metadata"]["name"])
  end

  @doc """
  Whether `fun` becomes true within `timeout_ms`, checked every 50 ms. Only for what sends
  no event to wait for (a Job deleted after the process that started it died).
  """
  def eventually(fun, timeout_ms \\ 30_000), do: poll(fun, System.monotonic_time(:millisecond) + timeout_ms)

  defp poll(fun, deadline) do
    cond do
      fun.() ->
        true

      System.monotonic_time(:millisecond) > deadline ->
        false

      true ->
        Process.sleep(50)
        poll(fun, deadline)
    end
  end
end
