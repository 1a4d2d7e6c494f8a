defmodule SykliK8s.SykliHostTest do
  # sykli's own call path (the host harness: its CLI's git preparation, its executor's
  # setup/run_task/teardown, stdout discarded) with this project's three modules, against
  # the real control plane and a real git server. What the task sees is checked inside
  # the task itself.
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO
  import SykliK8s.Test.GitRepo

  import SykliK8s.Test.SykliRun,
    only: [repo!: 2, repo!: 3, repo!: 4, task: 2, task: 3, run: 2, run: 3, result: 2]

  alias Sykli.Executor.TaskResult
  alias SykliK8s.Test.{Host, RealCluster, SykliRun}

  @moduletag timeout: 300_000

  setup_all do
    {:ok, SykliRun.start_all!()}
  end

  test "the worked example: mount(src, \"/app\") is the exact commit at /app; the logs come back", ctx do
    repo = repo!(ctx, "ci-example")

    check =
      ~s|cd /app && test "$(cat README.md)" = "hello from the commit" && | <>
        ~s|test "$(git rev-parse HEAD)" = "$EXPECTED" && echo found-the-commit|

    {answer, stderr} = run(repo.work, [task("build", check, %{"env" => %{"EXPECTED" => repo.sha}})])

    assert {:ok, [%TaskResult{name: "build", status: :passed, output: output}]} = answer
    assert output =~ "found-the-commit"
    # sykli discards stdout: progress and the live log are on stderr.
    assert stderr =~ "[build] found-the-commit"
    assert stderr =~ "✓ build succeeded"
    assert RealCluster.jobs(ctx.info, "ci-example") == []
  end

  test "src:frontend is that directory; src:. from a subdirectory workdir is that subdirectory", ctx do
    repo = repo!(ctx, "ci-subpath", %{"frontend/index.js" => "front\n", "backend/main.go" => "back\n"})

    sub = %{"mounts" => [%{"resource" => "src:frontend", "path" => "/app", "type" => "directory"}]}
    only_frontend = ~s|test "$(cat /app/index.js)" = front && test ! -e /app/README.md && echo sub-ok|
    {answer, _} = run(repo.work, [task("sub", only_frontend, sub)])
    assert {:ok, [%TaskResult{status: :passed}]} = answer

    # sykli's workdir is where it runs: `sykli` in frontend/ mounts frontend/ as src:.
    {answer, _} = run(Path.join(repo.work, "frontend"), [task("here", only_frontend)])
    assert {:ok, [%TaskResult{status: :passed, output: out}]} = answer
    assert out =~ "sub-ok"

    outside = %{"mounts" => [%{"resource" => "src:..", "path" => "/app", "type" => "directory"}]}
    {answer, stderr} = run(repo.work, [task("outside", "true", outside)])
    assert {:error, [%TaskResult{status: :failed} = failed]} = answer
    assert Host.render(failed) =~ "outside the repository"
    assert stderr =~ "outside the repository"
  end

  test "two dependent tasks run in order; a failing one shows its logs and exit code, its dependents are blocked",
       ctx do
    repo = repo!(ctx, "ci-deps")

    tasks = [
      task("first", "echo one"),
      task("second", "echo two; echo oops >&2; exit 3", %{"depends_on" => ["first"]}),
      task("third", "echo never", %{"depends_on" => ["second"]})
    ]

    {answer, stderr} = run(repo.work, tasks)
    assert {:error, results} = answer
    assert result(results, "first").status == :passed
    second = result(results, "second")
    assert second.status == :failed
    assert %Sykli.Error{code: "task_failed", exit_code: 3, task: "second"} = second.error
    rendered = Host.render(second)
    assert rendered =~ "two"
    assert rendered =~ "oops"
    assert rendered =~ "exit code 3"
    assert result(results, "third").status == :blocked
    refute stderr =~ "[third]"
    {first_at, _} = :binary.match(stderr, "✓ first succeeded")
    {second_at, _} = :binary.match(stderr, "▶ second")
    assert first_at < second_at
  end

  test "a retried task gets a fresh Job per attempt, and the second attempt succeeds", ctx do
    repo = repo!(ctx, "ci-retry")
    state_dir = Path.join(repo.tmp, "attempts")
    File.mkdir_p!(state_dir)
    File.chmod!(state_dir, 0o777)

    flaky =
      task("flaky", "if [ -e /state/tried ]; then echo second-try; else touch /state/tried; exit 1; fi", %{
        "retry" => 1,
        "k8s" => %{
          "volumes" => [%{"name" => "state", "mount_path" => "/state", "host_path" => %{"path" => state_dir}}]
        }
      })

    {answer, stderr} = run(repo.work, [flaky])
    assert {:ok, [%TaskResult{status: :passed, output: out}]} = answer
    assert out =~ "second-try"
    [_, first_job] = Regex.run(~r/▶ flaky.* started \(Job ci-retry\/(\S+)\)/, stderr)
    [_, second_job] = Regex.run(~r/started \(Job ci-retry\/(\S+), attempt 2\)/, stderr)
    assert first_job != second_job
  end

  test "task.timeout is enforced by the target and reported as sykli's timeout", ctx do
    repo = repo!(ctx, "ci-timeout")
    {answer, _} = run(repo.work, [task("slow", "echo start; sleep 120", %{"timeout" => 3})])
    assert {:error, [%TaskResult{status: :failed, error: error}]} = answer
    assert %Sykli.Error{code: "task_timeout"} = error
    assert error.message =~ "timed out after 3.0s"
    assert error.output =~ "start"
  end

  test "secrets resolve from the cluster, or from the environment when the Secret is missing", ctx do
    repo = repo!(ctx, "ci-secrets")
    RealCluster.api_post!(ctx.info, "/api/v1/namespaces", %{metadata: %{name: "ci-secrets"}})

    RealCluster.api_post!(ctx.info, "/api/v1/namespaces/ci-secrets/secrets", %{
      metadata: %{name: "deploy"},
      stringData: %{"value" => "v1", "token" => "t1"}
    })

    var = "SYKLI_HOST_TEST_SECRET_#{System.unique_integer([:positive])}"
    System.put_env(var, "from-env")
    on_exit(fn -> System.delete_env(var) end)

    ok = task("uses", "echo ok", %{"secrets" => ["deploy", "deploy/token", var]})
    {answer, _} = run(repo.work, [ok])
    assert {:ok, [%TaskResult{status: :passed}]} = answer

    {answer, _} = run(repo.work, [task("missing", "echo never", %{"secrets" => ["nowhere/key"]})])
    assert {:error, [%TaskResult{status: :errored}]} = answer

    state = %{engine: %{cluster: nil}}
    assert Sykli.Target.K8s.resolve_secret(var, state) == {:ok, "from-env"}
  end

  test "a dirty tree sykli let through (--allow-dirty) is built as HEAD, with a warning", ctx do
    repo = repo!(ctx, "ci-dirty")
    write!(repo.work, "README.md", "local edit\n")
    check = ~s|test "$(cat /app/README.md)" = "hello from the commit" && echo head-ok|

    {answer, _} = run(repo.work, [task("t", check)])
    assert {:error, %Sykli.Error{code: "uncommitted_changes"}} = answer

    {answer, stderr} = run(repo.work, [task("t", check)], allow_dirty: true)
    assert {:ok, [%TaskResult{status: :passed}]} = answer
    assert stderr =~ "--allow-dirty: building HEAD"
  end

  test "artifacts: a task's output reaches a later task's task_inputs through the artifact claim", ctx do
    repo = repo!(ctx, "ci-artifacts")
    RealCluster.api_post!(ctx.info, "/api/v1/namespaces", %{metadata: %{name: "ci-artifacts"}})
    RealCluster.claim!(ctx.info, "ci-artifacts", "sykli-artifacts")

    producer =
      task("build", "mkdir -p dist && echo built-$EXPECTED > dist/app.txt", %{
        "env" => %{"EXPECTED" => repo.sha},
        "outputs" => %{"app" => "./dist"}
      })

    consumer =
      task("deploy", ~s|test "$(cat /app/incoming/app.txt)" = "built-$EXPECTED" && echo got-artifact|, %{
        "env" => %{"EXPECTED" => repo.sha},
        "depends_on" => ["build"],
        "task_inputs" => [%{"from_task" => "build", "output" => "app", "dest" => "./incoming"}]
      })

    {answer, stderr} = run(repo.work, [producer, consumer])
    assert {:ok, results} = answer, stderr
    assert result(results, "deploy").output =~ "got-artifact"
  end

  test "the namespace is created when missing; an invalid strategy variable is refused before any API call",
       ctx do
    repo = repo!(ctx, "ci-fresh-ns")
    {answer, _} = run(repo.work, [task("t", "echo ok")])
    assert {:ok, _} = answer

    assert RealCluster.api_get!(ctx.info, "/api/v1/namespaces/ci-fresh-ns")["metadata"]["name"] ==
             "ci-fresh-ns"

    ctx_struct = Sykli.GitContext.detect(repo.work)

    stderr =
      capture_io(:stderr, fn ->
        assert {:error, %SykliK8s.Error{kind: :invalid_option, message: message}} =
                 SykliK8s.Boundary.setup([git_context: ctx_struct, workdir: repo.work], %{
                   "SYKLI_SOURCE_STRATEGY" => "rsync"
                 })

        assert message =~ "SYKLI_SOURCE_STRATEGY"
      end)

    assert stderr =~ "SYKLI_SOURCE_STRATEGY is \"rsync\""
  end

  test "an account that may not create the missing namespace gets one line naming it and how to set it, before any Job",
       ctx do
    # The read-only context's ServiceAccount (the built-in `view` role) may read and not write.
    repo = repo!(ctx, "ci-not-allowed", %{}, ", context: \"sykli-test-readonly\"")
    {answer, stderr} = run(repo.work, [task("t", "echo ok")])
    assert {:error, reason} = answer

    [line] = stderr |> String.split("\n", trim: true) |> Enum.filter(&(&1 =~ "ci-not-allowed"))
    assert line =~ ~s(namespace "ci-not-allowed" does not exist and this account may not create it)
    assert line =~ "kubectl create namespace ci-not-allowed"
    assert line =~ "SYKLI_K8S_NAMESPACE"
    # sykli prints "target setup failed" and never the cause: the line above is what the
    # user reads, and the cause says the same.
    assert %Sykli.Error{cause: %SykliK8s.Error{kind: :forbidden, message: message}} = reason
    assert line == "sykli k8s: " <> message
    assert RealCluster.jobs(ctx.info, "ci-not-allowed") == []
  end
end
