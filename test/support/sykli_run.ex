defmodule SykliK8s.Test.SykliRun do
  @moduledoc """
  Runs pipelines through sykli's own call path (`SykliK8s.Test.Host`) with this project's
  modules, for the end-to-end tests: pushed repositories whose `.sykli/config.exs` names
  the real control plane, tasks as the pipeline JSON has them, and the run's answer with what it
  wrote on stderr (sykli discards stdout).
  """

  import ExUnit.Assertions
  import ExUnit.CaptureIO
  import SykliK8s.Test.GitRepo

  alias SykliK8s.Test.{Cluster, Host}

  @web_image "ghcr.io/sykli/test-web:1"

  # The web image's program: answers every GET with "pong" on the port it is given.
  @web_server """
  import http.server, sys
  class Pong(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
          self.send_response(200)
          self.end_headers()
          self.wfile.write(b"pong\\n")
  http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Pong).serve_forever()
  """

  @doc "The sync helper image the nodes map to the host build of sykli-sync."
  def sync_image, do: SykliK8s.Test.RealCluster.sync_image()

  @doc """
  A service image: its entrypoint (it has no other, as a sykli service has no command)
  serves "pong" over HTTP on 127.0.0.1 at the `web_port` of `start_all!/0`.
  """
  def web_image, do: @web_image

  @doc """
  The run's shared real control plane (`SykliK8s.Test.RealCluster`, whose nodes have the
  sync and web images), a git server and a directory, for a whole test module
  (`setup_all`): the server and directory removed after the module's last test.
  `web_port`: where the web image listens (pods share the host's network). Each test
  names a namespace of its own.
  """
  def start_all! do
    tmp = tmp_dir!("sykli-host")
    info = SykliK8s.Test.RealCluster.info()
    srv = Path.join(tmp, "srv")
    File.mkdir_p!(srv)
    %{info: info, srv: srv, git_base: Cluster.git_server!(srv), web_port: info["web_port"]}
  end

  @doc "The web image's entrypoint, listening on `port`."
  def web_entrypoint(port), do: ["/usr/bin/python3", "-c", @web_server, Integer.to_string(port)]

  @doc "A loopback port nothing listens on now (the kernel's pick, released for the service)."
  def free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :ok = :gen_tcp.close(socket)
    port
  end

  @doc """
  A repository pushed to the git server, with `files` and a `.sykli/config.exs` naming the
  control plane, `namespace` and the sync image, plus `config` (more keyword lines).
  Returns `%{work, sha, tmp, namespace, bare}` (`bare`: the served repository, to push to).
  """
  def repo!(ctx, namespace, files \\ %{}, config \\ "") do
    tmp = tmp_dir!()
    work = init!(Path.join(tmp, "work"))

    write!(work, ".sykli/config.exs", """
    import Config
    config :sykli, :k8s, kubeconfig: "#{ctx.info["kubeconfig"]}", namespace: "#{namespace}",
      sync_image: "#{sync_image()}"#{config}
    """)

    write!(work, "README.md", "hello from the commit\n")
    Enum.each(files, fn {path, content} -> write!(work, path, content) end)
    sha = commit_all!(work, "first")
    name = "repo-#{System.unique_integer([:positive])}.git"
    git!(ctx.srv, ["clone", "-q", "--bare", work, name])
    git!(work, ["remote", "add", "origin", "#{ctx.git_base}/#{name}"])
    git!(work, ["fetch", "-q", "origin"])
    git!(work, ["branch", "-q", "-u", "origin/main"])
    %{work: work, sha: sha, tmp: tmp, namespace: namespace, bare: Path.join(ctx.srv, name)}
  end

  @doc "A task in any image with the repository mounted at /app (`mount(src, \"/app\")`)."
  def task(name, command, extra \\ %{}) do
    Map.merge(
      %{
        "name" => name,
        "container" => "any",
        "command" => command,
        "mounts" => [%{"resource" => "src:.", "path" => "/app", "type" => "directory"}]
      },
      extra
    )
  end

  @doc """
  Runs `tasks` as sykli would, for the workdir `path`; returns `{answer, stderr}`. `opts`:
  the harness's (`allow_dirty:`, `timeout:`…) and `version:` (the pipeline's, default "2").
  """
  def run(path, tasks, opts \\ []) do
    parent = self()
    {version, opts} = Keyword.pop(opts, :version, "2")
    pipeline = %{"version" => version, "tasks" => tasks}

    stderr =
      capture_io(:stderr, fn ->
        send(parent, {:answer, Host.run(path, [pipeline: pipeline] ++ opts)})
      end)

    assert_received {:answer, answer}
    {answer, stderr}
  end

  @doc "The result of task `name`."
  def result(results, name), do: Enum.find(results, &(&1.name == name)) || flunk("no result for #{name}")
end
