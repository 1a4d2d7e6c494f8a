defmodule SykliK8s.TargetRunTest do
  # Submission paths that need no cluster: configuration errors and an unreachable server.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  alias SykliK8s.Target

  defp kubeconfig!(dir, server), do: SykliK8s.Test.Cluster.kubeconfig!(dir, server, "team-a")

  defp closed_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end

  test "a missing kubeconfig is a config error naming it" do
    assert {:error, %SykliK8s.Error{kind: :config, message: message}} =
             Target.connect(%{kubeconfig: "/nonexistent/kubeconfig"})

    assert message =~ "/nonexistent/kubeconfig"
  end

  test "an unknown context is a config error naming it" do
    dir = tmp_dir!()
    path = kubeconfig!(dir, "https://127.0.0.1:1")

    assert {:error, %SykliK8s.Error{kind: :config, message: message}} =
             Target.connect(%{kubeconfig: path, context: "nope"})

    assert message =~ ~s("nope")
  end

  test "the namespace comes from the option, else the kubeconfig context" do
    path = kubeconfig!(tmp_dir!(), "https://127.0.0.1:1")
    {:ok, cluster} = Target.connect(%{kubeconfig: path})
    assert %{namespace: "team-a", open_watchers: 0} = SykliK8s.Native.k8s_cluster_info(cluster)
    {:ok, cluster} = Target.connect(%{kubeconfig: path, namespace: "other"})
    assert %{namespace: "other"} = SykliK8s.Native.k8s_cluster_info(cluster)
  end

  test "starting returns at once; events and the failure arrive as messages" do
    tmp = tmp_dir!()
    {work, _} = with_origin!(tmp)
    git!(work, ["remote", "set-url", "origin", "https://git.example.com/acme/shop.git"])
    {:ok, ctx} = SykliK8s.Git.detect(work, env: %{})
    path = kubeconfig!(tmp, "https://127.0.0.1:#{closed_port()}")
    {:ok, state} = Target.setup(kubeconfig: path, git_context: ctx, namespace: "ci")

    task = %{name: "build", command: "true", container: "alpine:3.20"}
    assert {:ok, %{tag: tag, job: job}} = Target.start_task(task, state)
    assert job =~ ~r/\Asykli-build-[a-z0-9]{6}\z/
    # Nothing has been decided when start_task returns: the run goes on in the background.
    assert_receive {^tag, {:phase, :preflight, message}}, 5_000
    assert message =~ "namespace ci"
    assert_receive {^tag, {:done, {:error, {:unreachable, message, %{}}}}}, 60_000
    assert message =~ "reading the namespace"
    refute_received {^tag, _}
  end
end
