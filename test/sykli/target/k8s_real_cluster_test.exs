defmodule Sykli.Target.K8sRealClusterTest do
  # Against a real cluster, on request only:
  #   KUBECONFIG=~/.kube/config mix test --only cluster
  # SYKLI_TEST_NAMESPACE (default sykli-test) is created when missing.
  use ExUnit.Case, async: false

  alias Sykli.Target.K8s

  @moduletag :cluster
  @moduletag timeout: 600_000

  setup do
    ns = System.get_env("SYKLI_TEST_NAMESPACE", "sykli-test")

    {:ok, state} =
      K8s.setup(
        kubeconfig: System.get_env("KUBECONFIG"),
        namespace: ns,
        create_namespace: true,
        git_context: %Sykli.GitContext{url: "https://github.com/git/git.git", sha: String.duplicate("0", 40)}
      )

    {:ok, state: state}
  end

  test "success with a live log, an exit code, an image that cannot be pulled", %{state: state} do
    me = self()
    on_event = fn event -> send(me, event) end

    assert :ok =
             K8s.run_task(%{name: "ok", container: "busybox:1.36", command: "echo hello-from-sykli"}, state,
               on_event: on_event
             )

    assert_received {:log, "task", "hello-from-sykli"}

    assert {:error, %Sykli.Error{kind: :task_failed, details: %{exit_code: 3}}} =
             K8s.run_task(%{name: "bad", container: "busybox:1.36", command: "exit 3"}, state,
               on_event: on_event
             )

    assert {:error, %Sykli.Error{kind: :image_pull}} =
             K8s.run_task(%{name: "pull", container: "registry.invalid/nope:1", command: "true"}, state,
               on_event: on_event
             )
  end

  test "cancelling deletes the Job", %{state: state} do
    {:ok, run} =
      K8s.start_task(%{name: "long", container: "busybox:1.36", command: "echo started; sleep 600"}, state)

    tag = run.tag
    assert_receive {^tag, {:log, "task", "started"}}, 300_000
    :ok = K8s.cancel(run)
    assert {:error, %Sykli.Error{kind: :cancelled}} = K8s.await(run)
  end
end
