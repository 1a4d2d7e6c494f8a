defmodule SykliK8s.TargetRealClusterTest do
  # Against a real cluster, on request only:
  #   KUBECONFIG=~/.kube/config mix test --only cluster
  # SYKLI_TEST_NAMESPACE (default sykli-test) is created when missing.
  use ExUnit.Case, async: false

  alias SykliK8s.Target

  @moduletag :cluster
  @moduletag timeout: 600_000

  setup do
    ns = System.get_env("SYKLI_TEST_NAMESPACE", "sykli-test")

    {:ok, state} =
      Target.setup(
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
             Target.run_task(
               %{name: "ok", container: "busybox:1.36", command: "echo hello-from-sykli"},
               state,
               on_event: on_event
             )

    assert_received {:log, "task", "hello-from-sykli"}

    assert {:error, %SykliK8s.Error{kind: :task_failed, details: %{exit_code: 3}}} =
             Target.run_task(%{name: "bad", container: "busybox:1.36", command: "exit 3"}, state,
               on_event: on_event
             )

    assert {:error, %SykliK8s.Error{kind: :image_pull}} =
             Target.run_task(%{name: "pull", container: "registry.invalid/nope:1", command: "true"}, state,
               on_event: on_event
             )
  end

  test "cancelling deletes the Job", %{state: state} do
    {:ok, run} =
      Target.start_task(%{name: "long", container: "busybox:1.36", command: "echo started; sleep 600"}, state)

    tag = run.tag
    assert_receive {^tag, {:log, "task", "started"}}, 300_000
    :ok = Target.cancel(run)
    assert {:error, %SykliK8s.Error{kind: :cancelled}} = Target.await(run)
  end
end
