defmodule SykliK8s.SykliHostMoreTest do
  # sykli's own call path with this project's modules (the host harness), on the real
  # control plane: the PVC and S3 strategies, volumes, success criteria, services, git refs.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  import SykliK8s.Test.SykliRun, only: [repo!: 2, repo!: 4, task: 2, task: 3, run: 2, run: 3]
  alias Sykli.Executor.TaskResult
  alias SykliK8s.Test.{Host, RealCluster, S3Server, SykliRun}

  @moduletag timeout: 300_000

  setup_all do
    {:ok, SykliRun.start_all!()}
  end

  defp namespace!(ctx, name),
    do: RealCluster.api_post!(ctx.info, "/api/v1/namespaces", %{metadata: %{name: name}})

  test "the PVC strategy: the dirty working tree sykli let through is what the task sees", ctx do
    repo = repo!(ctx, "ci-pvc", %{}, ", source_strategy: :pvc, source_pvc: \"src\"")
    namespace!(ctx, "ci-pvc")
    RealCluster.claim!(ctx.info, "ci-pvc", "src")
    write!(repo.work, "README.md", "edited, not committed\n")
    write!(repo.work, "notes.txt", "untracked\n")

    check =
      ~s|test "$(cat /app/README.md)" = "edited, not committed" && test -f /app/notes.txt && echo tree-ok|

    {answer, stderr} = run(repo.work, [task("check", check)], allow_dirty: true)
    assert {:ok, [%TaskResult{status: :passed, output: out}]} = answer, stderr
    assert out =~ "tree-ok"
    assert stderr =~ "into claim src"
  end

  test "the S3 strategy: the working tree through a bucket, the Job holding no credential", ctx do
    s3 = S3Server.start!(Path.join(tmp_dir!(), "s3"), ["builds"])

    config =
      ", source_strategy: :s3, keep_failed: true, " <>
        ~s|s3: [bucket: "builds", endpoint: "#{s3["endpoint"]}", region: "#{s3["region"]}"]|

    repo = repo!(ctx, "ci-s3", %{}, config)
    namespace!(ctx, "ci-s3")
    # The AWS chain of this process: only this test reads S3 in this VM.
    System.put_env("AWS_ACCESS_KEY_ID", s3["access_key"])
    System.put_env("AWS_SECRET_ACCESS_KEY", s3["secret_key"])

    on_exit(fn ->
      System.delete_env("AWS_ACCESS_KEY_ID")
      System.delete_env("AWS_SECRET_ACCESS_KEY")
    end)

    write!(repo.work, "README.md", "through the bucket\n")
    check = ~s|test "$(cat /app/README.md)" = "through the bucket" && echo s3-ok; exit 4|
    {answer, stderr} = run(repo.work, [task("check", check)], allow_dirty: true)
    assert {:error, [%TaskResult{status: :failed, output: out, error: error}]} = answer, stderr
    assert out =~ "s3-ok"
    assert error.exit_code == 4
    assert stderr =~ "uploaded"

    [job] = RealCluster.jobs(ctx.info, "ci-s3")

    text =
      SykliK8s.JSON.encode!(RealCluster.api_get!(ctx.info, "/apis/batch/v1/namespaces/ci-s3/jobs/#{job}"))

    refute text =~ s3["secret_key"]
    # Nor the URL: the fetch reads it from the Job's own Secret, signed at submission.
    refute text =~ "X-Amz-"
    assert text =~ "#{job}-source"
  end

  test "create_volume makes sykli-cache-NAME once; artifact_path; a relative artifact nobody produced", ctx do
    repo = repo!(ctx, "ci-volumes")
    namespace!(ctx, "ci-volumes")
    ctx_struct = Sykli.GitContext.detect(repo.work)

    {:ok, state} =
      ExUnit.CaptureIO.with_io(:stderr, fn ->
        Sykli.Target.K8s.setup(git_context: ctx_struct, workdir: repo.work)
      end)
      |> elem(0)

    assert {:ok,
            %{id: "sykli-cache-cargo-registry", host_path: nil, reference: "pvc:sykli-cache-cargo-registry"}} =
             Sykli.Target.K8s.create_volume("cargo-registry", %{type: :cache, size: "2Gi"}, state)

    assert {:ok, %{id: "sykli-cache-cargo-registry"}} =
             Sykli.Target.K8s.create_volume("cargo-registry", %{type: :cache}, state)

    assert {:ok, %{id: "sykli-dir-out"}} = Sykli.Target.K8s.create_volume("out", %{}, state)

    pvc =
      RealCluster.api_get!(
        ctx.info,
        "/api/v1/namespaces/ci-volumes/persistentvolumeclaims/sykli-cache-cargo-registry"
      )

    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]

    assert Sykli.Target.K8s.artifact_path("build", "app", repo.work, state) == "/artifacts/build/app"

    assert {:error, %SykliK8s.Error{kind: :not_found, message: message}} =
             Sykli.Target.K8s.copy_artifact("./dist", "./in", repo.work, state)

    assert message =~ "no task of this run has produced \"./dist\""

    assert {:error, %SykliK8s.Error{kind: :invalid_option}} =
             Sykli.Target.K8s.copy_artifact("../outside", "./in", repo.work, state)

    Sykli.Target.K8s.teardown(state)
  end

  test "success criteria: exit_code is evaluated, file criteria are unsupported per criterion", ctx do
    repo = repo!(ctx, "ci-criteria")
    exit0 = %{"success_criteria" => [%{"type" => "exit_code", "equals" => 0}]}
    file = %{"success_criteria" => [%{"type" => "file_exists", "path" => "dist/app"}]}

    {answer, _} = run(repo.work, [task("ok", "true", exit0)], version: "3")
    assert {:ok, [%TaskResult{status: :passed, success_criteria_results: [%{status: :passed}]}]} = answer

    {answer, _} = run(repo.work, [task("files", "true", file)], version: "3")
    assert {:error, [%TaskResult{status: :failed, error: error, success_criteria_results: [r]}]} = answer
    assert %Sykli.Error{code: "unsupported_success_criteria_for_target"} = error
    assert r.status == :unsupported and r.message =~ "not evaluated on Kubernetes"
  end

  test "a service runs beside its task, reached by its name as on sykli's local target, and stops with it",
       ctx do
    repo = repo!(ctx, "ci-services")
    # A sykli service is an image and a name, no command: its image's entrypoint runs.
    services = %{
      "services" => [%{"image" => SykliRun.web_image(), "name" => "cache"}],
      "env" => %{"PORT" => Integer.to_string(ctx.web_port)}
    }

    # The task waits for the service to listen, as a task does for a database.
    check = """
    for i in $(seq 1 200); do
      out=$(python3 -c 'import os, urllib.request; print(urllib.request.urlopen("http://cache:" + os.environ["PORT"] + "/", timeout=1).read().decode().strip())' 2>/dev/null) && break
      sleep 0.05
    done
    echo "the service said: $out"
    getent hosts cache
    test "$out" = pong
    """

    {answer, stderr} = run(repo.work, [task("with-service", check, services)])
    assert {:ok, [%TaskResult{status: :passed, output: out}]} = answer, stderr
    assert out =~ "the service said: pong"

    # The name is an alias of the pod's loopback (hostAliases), shared with the sidecar.
    assert out =~ ~r/^127\.0\.0\.1\s+cache$/m
  end

  test "SYKLI_GIT_REF builds a ref of the remote; a dirty tree does not matter then", ctx do
    repo = repo!(ctx, "ci-ref")
    git!(repo.work, ["tag", "v1.0.0"])
    git!(repo.work, ["push", "-q", repo.bare, "v1.0.0"])
    write!(repo.work, "README.md", "second\n")
    second = commit_all!(repo.work, "second")
    git!(repo.work, ["push", "-q", repo.bare, "main"])
    git!(repo.work, ["fetch", "-q", "origin"])

    check = ~s|test "$(git -C /app rev-parse HEAD)" = "$EXPECTED" && echo ref-ok|
    ctx_struct = Sykli.GitContext.detect(repo.work)

    {{:ok, state}, stderr} =
      ExUnit.CaptureIO.with_io(:stderr, fn ->
        SykliK8s.Boundary.setup([git_context: ctx_struct, workdir: repo.work], %{"SYKLI_GIT_REF" => "v1.0.0"})
      end)

    assert stderr =~ "v1.0.0"
    assert state.git_context.sha == repo.sha
    assert state.git_context.sha != second
    Sykli.Target.K8s.teardown(state)

    {{:error, %SykliK8s.Error{kind: :unknown_ref}}, _} =
      ExUnit.CaptureIO.with_io(:stderr, fn ->
        SykliK8s.Boundary.setup([git_context: ctx_struct, workdir: repo.work], %{"SYKLI_GIT_REF" => "nope"})
      end)

    # The whole path, with HEAD: the task sees the second commit.
    {answer, _} = run(repo.work, [task("head", check, %{"env" => %{"EXPECTED" => second}})])
    assert {:ok, [%TaskResult{status: :passed}]} = answer
  end

  test "a task's failure is rendered by sykli with its logs, exit code and the reason", ctx do
    repo = repo!(ctx, "ci-render")
    {answer, _} = run(repo.work, [task("pull", "true", %{"container" => "registry.invalid/app:1"})])
    assert {:error, [%TaskResult{status: :failed} = r]} = answer
    rendered = Host.render(r)
    assert rendered =~ "registry.invalid/app:1"
  end
end
