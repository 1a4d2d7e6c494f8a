defmodule SykliK8s.TargetArtifactsTest do
  # The artifact callbacks end to end on the real control plane (each test in its own
  # namespace): a producer Job writes its artifact on the artifact claim (mounted because it
  # declares outputs), copy_artifact copies it on the claim through the receiver pod (the
  # host build of sykli-sync, as the nodes' --image-file), and a consumer Job (declaring
  # task_inputs) reads the copy.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  alias SykliK8s.Error
  alias SykliK8s.Target
  alias SykliK8s.Test.RealCluster

  @moduletag timeout: 300_000
  @image RealCluster.sync_image()

  setup do
    tmp = tmp_dir!()
    work = init!(Path.join(tmp, "work"))
    write!(work, "README.md", "readme\n")
    commit_all!(work, "first")
    # The Jobs mount no source, but a git context names one.
    git!(work, ["remote", "add", "origin", "https://git.invalid/app.git"])
    info = RealCluster.info()
    ns = RealCluster.namespace!("artifacts")
    RealCluster.create_namespace!(info, ns)

    {:ok, state} =
      Target.setup(kubeconfig: info["kubeconfig"], namespace: ns, workdir: work, sync_image: @image)

    {:ok, info: info, state: state, work: work, ns: ns}
  end

  # Returns the claim's host directory (its PersistentVolume's hostPath).
  defp claim!(ctx, name), do: RealCluster.claim!(ctx.info, ctx.ns, name)

  defp logs_to_me(name), do: fn event -> send(self(), {:event, name, event}) end

  defp artifact_mounts(job) do
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]

    volumes =
      for v <- spec["volumes"] || [],
          v["persistentVolumeClaim"],
          do: {v["name"], v["persistentVolumeClaim"]["claimName"]}

    mounts =
      for m <- container["volumeMounts"] || [], do: {m["name"], m["mountPath"], m["readOnly"], m["subPath"]}

    {volumes, mounts}
  end

  test "a producer's artifact is copied on the claim and read by a consumer Job", ctx do
    claim = claim!(ctx, "sykli-artifacts")
    file = Target.artifact_path("producer", "app.txt", ctx.work, ctx.state)
    dist = Target.artifact_path("producer", "dist", ctx.work, ctx.state)
    assert file == "/artifacts/producer/app.txt"
    assert dist == "/artifacts/producer/dist"

    producer = %{
      name: "producer",
      container: "any",
      command:
        ~s|mkdir -p /artifacts/producer/dist/lib && printf 'built %s\\n' "$(echo by-producer)" > #{file} | <>
          ~s|&& echo lib > #{dist}/lib/a.txt && ln -s lib/a.txt #{dist}/current && echo produced|,
      outputs: %{"app" => "app.txt", "dist" => "dist"}
    }

    # Declaring outputs mounts the task's own directory of the claim read-write at
    # /artifacts/<task> (never the claim's root); a task with neither outputs nor
    # task_inputs does not get it.
    {:ok, job} = Target.build_job_manifest(producer, "p", ctx.state)

    assert {[{"sykli-artifacts", "sykli-artifacts"}],
            [{"sykli-artifacts", "/artifacts/producer", nil, subpath}]} = artifact_mounts(job)

    assert subpath == "sykli-tasks/#{ctx.state.run_id}/producer"

    {:ok, plain} =
      Target.build_job_manifest(%{name: "plain", container: "any", command: "true"}, "q", ctx.state)

    assert {[], []} = artifact_mounts(plain)

    assert :ok = Target.run_task(producer, ctx.state, on_event: logs_to_me(:producer))
    assert_received {:event, :producer, {:log, "task", "produced"}}

    assert :ok = Target.copy_artifact(file, "/artifacts/consumer/in/x", ctx.work, ctx.state)
    assert :ok = Target.copy_artifact(dist, "/artifacts/consumer/dist", ctx.work, ctx.state)

    consumer = %{
      name: "consumer",
      container: "any",
      command:
        ~s|test "$(cat /artifacts/consumer/in/x)" = "built by-producer" | <>
          ~s|&& test "$(cat /artifacts/consumer/dist/lib/a.txt)" = lib | <>
          ~s|&& test "$(readlink /artifacts/consumer/dist/current)" = lib/a.txt | <>
          ~s|&& test "$(cat /artifacts/consumer/dist/current)" = lib && echo consumed-ok|,
      task_inputs: [%{from_task: "producer", output: "app", dest: "in/x"}]
    }

    {:ok, run} = Target.start_task(consumer, ctx.state)
    assert {:ok, %{exit_code: 0}} = Target.await(run, logs_to_me(:consumer))
    assert_received {:event, :consumer, {:log, "task", "consumed-ok"}}
    assert RealCluster.jobs(ctx.info, ctx.ns) == []

    # The receiver pod is the PVC strategy's, for the artifact claim.
    %{"items" => pods} = RealCluster.api_get!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/pods")

    assert [%{"metadata" => %{"name" => "sykli-sync-" <> _}}] =
             for(
               p <- pods,
               %{"persistentVolumeClaim" => %{"claimName" => "sykli-artifacts"}} <-
                 p["spec"]["volumes"] || [],
               do: p
             )

    # Each task wrote its own directory of this run only: the producer's, and the
    # consumer's copies.
    assert File.ls!(claim) == ["sykli-tasks"]
    assert File.ls!(Path.join(claim, "sykli-tasks")) == [ctx.state.run_id]

    assert File.ls!(Path.join([claim, "sykli-tasks", ctx.state.run_id])) |> Enum.sort() == [
             "consumer",
             "producer"
           ]

    # Another run (another branch, the same task names) reaches none of it: its producer
    # has no artifact until it builds one, and its consumer's directory is empty.
    {:ok, other} =
      Target.setup(
        kubeconfig: ctx.info["kubeconfig"],
        namespace: ctx.ns,
        workdir: ctx.work,
        sync_image: @image
      )

    assert other.run_id != ctx.state.run_id

    assert {:error, %Error{kind: :not_found}} =
             Target.copy_artifact(file, "/artifacts/consumer/in/x", ctx.work, other)

    {:ok, run} =
      Target.start_task(%{consumer | command: "test ! -e /artifacts/consumer/in && echo empty-here"}, other)

    assert {:ok, %{exit_code: 0}} = Target.await(run, logs_to_me(:other))
    assert_received {:event, :other, {:log, "task", "empty-here"}}
  end

  test "a missing source is :not_found naming the artifact; nothing is written", ctx do
    claim!(ctx, "sykli-artifacts")
    source = Target.artifact_path("producer", "never-built", ctx.work, ctx.state)

    assert {:error, %Error{kind: :not_found, message: message}} =
             Target.copy_artifact(source, "/artifacts/consumer/y", ctx.work, ctx.state)

    assert message =~ "the artifact /artifacts/producer/never-built does not exist"
    assert message =~ "#{ctx.ns}/sykli-artifacts"

    check = %{
      name: "check",
      container: "any",
      command: "test ! -e /artifacts/consumer && echo nothing-there",
      task_inputs: [%{from_task: "producer", output: "never-built", dest: "y"}]
    }

    assert :ok = Target.run_task(check, ctx.state, on_event: logs_to_me(:check))
    assert_received {:event, :check, {:log, "task", "nothing-there"}}
  end

  test "a missing artifact claim is named by the pre-flight and by copy_artifact; no Job", ctx do
    state = %{ctx.state | artifact_pvc: "no-such-claim"}
    task = %{name: "producer", container: "any", command: "true", outputs: ["app.txt"]}

    assert {:error, %Error{kind: :not_found, message: message}} =
             Target.run_task(task, state, on_event: fn _ -> :ok end)

    assert message =~ "no-such-claim"
    assert RealCluster.jobs(ctx.info, ctx.ns) == []

    assert {:error, %Error{kind: :not_found, message: message}} =
             Target.copy_artifact("/artifacts/a/b", "/artifacts/c/d", ctx.work, state)

    assert message =~ "PersistentVolumeClaim #{ctx.ns}/no-such-claim does not exist (artifact_pvc)"
  end
end

defmodule Sykli.Target.K8sArtifactPathTest do
  # The callbacks' argument checks: before any API call (the cluster below does not exist).
  use ExUnit.Case, async: true

  alias SykliK8s.Error
  alias SykliK8s.Target

  setup do
    dir = SykliK8s.Test.GitRepo.tmp_dir!("sykli-artifact-path")
    # No API call reaches it: what is refused is refused before any.
    kubeconfig = SykliK8s.Test.Cluster.kubeconfig!(dir)

    {:ok, state} = Target.setup(kubeconfig: kubeconfig, namespace: "ci", workdir: dir, git_context: nil)
    {:ok, state: state, dir: dir}
  end

  test "artifact_path: /artifacts/<task>/<name>, and an invalid name raises naming it", ctx do
    assert Target.artifact_path("build", "app", ctx.dir, ctx.state) == "/artifacts/build/app"

    assert Target.artifact_path("build", "dist/app.tar", ctx.dir, ctx.state) ==
             "/artifacts/build/dist/app.tar"

    for bad <- ["", "/etc/passwd", "..", "a/../../b", "a\0b", "a//b", "./a"] do
      assert_raise ArgumentError, ~r/invalid task name #{Regex.escape(inspect(bad))}/, fn ->
        Target.artifact_path(bad, "app", ctx.dir, ctx.state)
      end

      assert_raise ArgumentError, ~r/invalid artifact name #{Regex.escape(inspect(bad))}/, fn ->
        Target.artifact_path("build", bad, ctx.dir, ctx.state)
      end
    end
  end

  test "copy_artifact refuses paths outside /artifacts/, naming them, before any API call", ctx do
    good = "/artifacts/build/app"

    for {source, dest, named} <- [
          {"/artifacts/../etc/passwd", good, "/artifacts/../etc/passwd"},
          {"/etc/passwd", good, "/etc/passwd"},
          {good, "/tmp/x", "/tmp/x"},
          {good, "/artifacts/consumer/../../x", "/artifacts/consumer/../../x"},
          {good, "/artifacts/", "/artifacts/"},
          {"/artifactsx/a", good, "/artifactsx/a"},
          {good, "relative/x", "relative/x"}
        ] do
      assert {:error, %Error{kind: :invalid_option, message: message}} =
               Target.copy_artifact(source, dest, ctx.dir, ctx.state)

      assert message =~ inspect(named)
    end
  end

  test "artifact_pvc: false mounts no claim, and copy_artifact says there is none", ctx do
    {:ok, off} =
      Target.setup(
        kubeconfig: ctx.state.kubeconfig,
        namespace: "ci",
        workdir: ctx.dir,
        git_context: nil,
        artifact_pvc: false
      )

    task = %{name: "build", container: "any", command: "true", outputs: ["app"]}
    git = %Sykli.GitContext{url: "https://git.invalid/app.git", sha: String.duplicate("a", 40), dirty: false}

    for {state, mounted} <- [{ctx.state, ["/artifacts/build"]}, {off, []}] do
      {:ok, job} = Target.build_job_manifest(task, "j", Map.put(state, :git_context, git))
      [container] = job["spec"]["template"]["spec"]["containers"]
      assert Enum.map(container["volumeMounts"] || [], & &1["mountPath"]) == mounted
    end

    assert {:error, %Error{kind: :invalid_config, message: "artifact_pvc is false" <> _}} =
             Target.copy_artifact("/artifacts/a/b", "/artifacts/c/d", ctx.dir, off)

    assert {:error, %Error{kind: :invalid_option, message: message}} = Target.setup(artifact_pvc: "")
    assert message =~ "--artifact-pvc"
  end

  test "the NIF refuses them too, at once (no API call)", ctx do
    copy = fn from, to, run_id ->
      SykliK8s.JSON.encode!(%{namespace: "ci", claim: "c", from: from, to: to, run_id: run_id})
    end

    json = copy.("/artifacts/a/../../etc", "/artifacts/b", "r1")

    assert {:error, {:invalid_option, message}} =
             SykliK8s.Native.k8s_copy_artifact(ctx.state.cluster, json, make_ref())

    assert message =~ ~s|"/artifacts/a/../../etc" is not below /artifacts/|

    # A copy stays in one run's directory: a run id of one path component.
    escaping_run = copy.("/artifacts/a", "/artifacts/b", "../r")

    assert {:error, {:invalid_option, message}} =
             SykliK8s.Native.k8s_copy_artifact(ctx.state.cluster, escaping_run, make_ref())

    assert message =~ ~s|run id "../r" cannot name the run's directory|

    assert {:error, {_, "copy options" <> _}} =
             SykliK8s.Native.k8s_copy_artifact(ctx.state.cluster, "{", make_ref())

    assert_raise ArgumentError, fn -> SykliK8s.Native.k8s_copy_artifact(:not_a_cluster, json, make_ref()) end
    refute_received _
  end
end

defmodule SykliK8s.TargetArtifactScopeTest do
  # Collected outputs and task_inputs through sykli's own call path (the host harness) on
  # the real control plane: each run's outputs are kept under sykli-runs/<run>/<job> on the
  # artifact claim, and every container mounts only its part of the claim (the outputs
  # sidecar its Job's directory, the inputs placer its producers', read-only; the task
  # nothing). What a task tries against the others is checked on the claim itself.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  import SykliK8s.Test.SykliRun, only: [repo!: 2, task: 3, run: 2, result: 2]

  alias SykliK8s.Test.{Cluster, RealCluster}

  @moduletag timeout: 300_000

  setup_all do
    tmp = tmp_dir!("sykli-artifact-scope")
    info = RealCluster.info()
    srv = Path.join(tmp, "srv")
    File.mkdir_p!(srv)
    {:ok, info: info, srv: srv, git_base: Cluster.git_server!(srv)}
  end

  # Overwrites every app.txt it can reach (its own copy of build's artifact included),
  # and says whether it sees the claim at all.
  @evil """
  mkdir -p x && echo note > x/note
  for f in $(find /artifacts /app -name app.txt 2>/dev/null); do echo evil > "$f" && echo "overwrote $f"; done
  if [ -e /artifacts ]; then echo claim-mounted; else echo no-claim-here; fi
  """

  defp pipeline(mark) do
    [
      task("build", "mkdir -p dist && echo built-#{mark} > dist/app.txt", %{"outputs" => %{"app" => "./dist"}}),
      # A task with outputs and inputs of its own: every mount a task can get.
      task("evil", @evil, %{
        "depends_on" => ["build"],
        "outputs" => %{"x" => "./x"},
        "task_inputs" => [%{"from_task" => "build", "output" => "app", "dest" => "./stolen"}]
      }),
      task("deploy", ~s|test "$(cat /app/incoming/app.txt)" = built-#{mark} && echo deployed-#{mark}|, %{
        "depends_on" => ["evil"],
        "task_inputs" => [%{"from_task" => "build", "output" => "app", "dest" => "./incoming"}]
      })
    ]
  end

  defp files(dir) do
    for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true), File.regular?(path), into: %{} do
      {Path.relative_to(path, dir), File.read!(path)}
    end
  end

  test "a task reaches neither another task's nor another run's artifacts: each consumer reads its own run's",
       ctx do
    ns = RealCluster.namespace!("scoped")
    repo = repo!(ctx, ns)
    RealCluster.create_namespace!(ctx.info, ns)
    claim = RealCluster.claim!(ctx.info, ns, "sykli-artifacts")

    # Two runs of the same tasks, one after the other: the second's evil task would find the
    # first's artifacts too, were they within its reach.
    runs =
      for mark <- ["one", "two"] do
        {answer, stderr} = run(repo.work, pipeline(mark))
        assert {:ok, results} = answer, stderr
        assert result(results, "deploy").output =~ "deployed-#{mark}"
        evil = result(results, "evil").output
        # Its own copy of its input is its to scribble on; the claim is not in its reach.
        assert evil =~ "overwrote /app/stolen/app.txt"
        refute evil =~ "overwrote /artifacts"
        assert evil =~ "no-claim-here"
        [_, run_id] = Regex.run(~r/run (\w+): /, stderr)
        {mark, run_id}
      end

    # On the claim: only the runs' directories, each run's build output intact, nothing
    # written by the evil tasks but their own declared output.
    assert File.ls!(claim) == ["sykli-runs"]
    on_claim = files(Path.join(claim, "sykli-runs"))

    for {mark, run_id} <- runs do
      built = "built-#{mark}\n"

      assert [{_, ^built}] =
               Enum.filter(on_claim, fn {path, _} ->
                 path =~ ~r|^#{run_id}/sykli-build-[^/]+/dist/app.txt$|
               end)

      assert [{_, "note\n"}] =
               Enum.filter(on_claim, fn {path, _} -> path =~ ~r|^#{run_id}/sykli-evil-[^/]+/x/note$| end)
    end

    assert map_size(on_claim) == 4, inspect(on_claim)
    refute Enum.any?(on_claim, fn {_, content} -> content =~ "evil" end)
  end
end
