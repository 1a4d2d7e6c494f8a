defmodule SykliK8s.Test.Cluster do
  @moduledoc """
  The test kit's programs (loopback git servers, sshd, proxies), started as real processes
  for end-to-end tests; each stops when its port closes (stdin closes). The Kubernetes
  control plane the suites run on is `SykliK8s.Test.RealCluster`.
  """

  import ExUnit.Assertions

  def target_dir do
    System.get_env("CARGO_TARGET_DIR") || Path.join(System.user_home!(), ".cache/sykli/cargo-target")
  end

  defp bin!(name) do
    path = Path.join([target_dir(), "debug", name])
    assert File.exists?(path), "#{path} is missing: cargo build -p sykli_testkit -p sykli_sync --bins"
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
