defmodule SykliK8s.CLIK8sTest do
  # `sykli run --target=k8s` and `sykli info --check` through the real bin/sykli, against the
  # real control plane (shared by the run; each test in namespaces of its own) and a real
  # git server on 127.0.0.1.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  alias SykliK8s.Test.{Cluster, RealCluster}

  @sykli Path.expand("../../bin/sykli", __DIR__)
  @moduletag timeout: 300_000

  setup do
    tmp = tmp_dir!()
    ns = RealCluster.namespace!("cli")
    work = init!(Path.join(tmp, "work"))
    write!(work, "Cargo.toml", "[package]\nname = \"app\"\n")

    write!(
      work,
      ".sykli/config.exs",
      "import Config\nconfig :sykli, :k8s, namespace: \"#{ns}\", create_namespace: true\n"
    )

    sha = commit_all!(work, "first")
    srv = Path.join(tmp, "srv")
    File.mkdir_p!(srv)
    git!(srv, ["init", "-q", "--bare", "repo.git"])
    url = Cluster.git_server!(srv) <> "/repo.git"
    git!(work, ["remote", "add", "origin", url])
    # The git server only serves fetches: pushes go straight to the bare repository.
    git!(work, ["remote", "set-url", "--push", "origin", Path.join(srv, "repo.git")])
    git!(work, ["push", "-q", "-u", "origin", "main"])
    info = RealCluster.info()
    {:ok, tmp: tmp, work: work, sha: sha, info: info, kubeconfig: info["kubeconfig"], ns: ns}
  end

  defp sykli(ctx, args, opts \\ []) do
    env = [{"SYKLI_CWD", nil}, {"SYKLI_K8S_NAMESPACE", nil}] ++ Keyword.get(opts, :env, [])

    System.cmd(@sykli, args ++ ["--kubeconfig", Keyword.get(opts, :kubeconfig, ctx.kubeconfig)],
      cd: Keyword.get(opts, :cd, ctx.work),
      env: env,
      stderr_to_stdout: Keyword.get(opts, :stderr, true)
    )
  end

  # A pipeline file outside the repository (so writing it leaves the tree clean).
  defp pipeline!(ctx, tasks), do: SykliK8s.Test.Pipeline.file!(ctx.tmp, tasks)

  defp src(path), do: [%{resource: "src:.", path: path, type: "directory"}]

  # A task that checks the source at its mount path is the expected commit.
  defp checking(name, path, sha, extra \\ %{}) do
    Map.merge(
      %{
        name: name,
        container: "any",
        mounts: src(path),
        env: %{"EXPECTED" => sha},
        command: ~s|test -f Cargo.toml && test "$(git rev-parse HEAD)" = "$EXPECTED" && echo #{name}-ok|
      },
      extra
    )
  end

  defp events(out), do: out |> String.split("\n", trim: true) |> Enum.map(&SykliK8s.JSON.decode!/1)

  defp index(events, event, task) do
    Enum.find_index(events, &(&1["event"] == event and &1["task"] == task)) ||
      flunk("no #{event} event for #{task}")
  end

  describe "a pipeline" do
    test "runs in dependency order with parallel branches; each task finds the commit; --json is complete",
         ctx do
      file =
        pipeline!(ctx, [
          checking("checkout", "/app", ctx.sha),
          checking("unit", "/src", ctx.sha, %{depends_on: ["checkout"]}),
          checking("lint", "/work", ctx.sha, %{depends_on: ["checkout"]}),
          %{name: "package", container: "any", command: "echo packaged", depends_on: ["unit", "lint"]}
        ])

      {out, 0} =
        sykli(ctx, ~w(run --target=k8s --json --jobs 2 --run-id e2e1 --pipeline #{file}), stderr: false)

      events = events(out)

      assert %{"event" => "run_started", "run_id" => "e2e1", "namespace" => ns, "tasks" => 4, "sha" => sha} =
               hd(events)

      assert sha == ctx.sha and ns == ctx.ns
      assert %{"event" => "summary", "status" => "succeeded", "tasks" => tasks} = List.last(events)

      assert Enum.map(tasks, &{&1["name"], &1["status"]}) ==
               Enum.map(~w(checkout unit lint package), &{&1, "succeeded"})

      assert Enum.all?(tasks, &(is_integer(&1["duration_ms"]) and &1["job"] =~ "-e2e1"))

      for name <- ~w(checkout unit lint) do
        assert Enum.any?(
                 events,
                 &(&1["event"] == "log" and &1["task"] == name and &1["line"] == "#{name}-ok")
               )
      end

      assert Enum.all?(events, &is_binary(&1["time"]))
      # The branches start together once their dependency is done, and only then.
      assert index(events, "task_finished", "checkout") < index(events, "task_started", "unit")
      assert index(events, "task_started", "lint") < index(events, "task_finished", "unit")
      assert index(events, "task_started", "unit") < index(events, "task_finished", "lint")
      assert index(events, "task_started", "package") > index(events, "task_finished", "unit")
      assert index(events, "task_started", "package") > index(events, "task_finished", "lint")
      assert RealCluster.jobs(ctx.info, ctx.ns) == []
    end

    test "--jobs 1 runs independent tasks one after the other", ctx do
      file =
        pipeline!(ctx, [
          %{name: "a", container: "any", command: "echo a"},
          %{name: "b", container: "any", command: "echo b"}
        ])

      {out, 0} = sykli(ctx, ~w(run --target=k8s --json --jobs 1 --pipeline #{file}), stderr: false)
      events = events(out)
      assert index(events, "task_finished", "a") < index(events, "task_started", "b")
    end

    test "a failing task stops its dependents, not the others; people see lines and a summary", ctx do
      file =
        pipeline!(ctx, [
          %{name: "compile", container: "any", command: "echo boom; exit 3"},
          %{name: "test", container: "any", command: "echo never", depends_on: ["compile"]},
          %{name: "deploy", container: "any", command: "echo never", depends_on: ["test"]},
          %{name: "docs", container: "any", command: "echo docs-built"}
        ])

      {out, 1} = sykli(ctx, ~w(run --target=k8s --run-id f1 --pipeline #{file}))

      assert out =~
               "sykli: run f1: 4 tasks, commit #{String.slice(ctx.sha, 0, 12)} (main), namespace #{ctx.ns} on https://127.0.0.1:"

      assert out =~ "▶ compile started (Job sykli-compile-f1)"
      assert out =~ "[compile] boom\n"
      assert out =~ ~r/✗ compile failed after [0-9.]+s: the task failed with exit code 3/
      assert out =~ "- test skipped: depends on compile, which failed"
      assert out =~ "- deploy skipped: depends on test, which was skipped"
      assert out =~ "[docs] docs-built\n"
      assert out =~ ~r/✓ docs succeeded in [0-9.]+s/
      refute out =~ "never"
      assert out =~ ~r/\nTASK +STATUS +TIME +DETAIL\n/

      assert out =~
               ~r/\ncompile +failed +[0-9.]+s +the task failed with exit code 3 \(Job sykli-compile-f1\)\n/

      assert out =~ ~r/\ndeploy +skipped +- +depends on test, which was skipped\n/
      assert out =~ "run failed: 1 succeeded, 1 failed, 2 skipped"
      assert RealCluster.jobs(ctx.info, ctx.ns) == []

      {_, 1} = sykli(ctx, ~w(run --target=k8s --run-id f2 --keep-failed --pipeline #{file}))
      assert RealCluster.jobs(ctx.info, ctx.ns) == ["sykli-compile-f2"]
    end

    test "Ctrl-C cancels: running Jobs are deleted, the summary says what was cancelled", ctx do
      file =
        pipeline!(ctx, [
          %{name: "slow", container: "any", command: "echo slow-started; sleep 600"},
          %{name: "after", container: "any", command: "echo never", depends_on: ["slow"]}
        ])

      port =
        Port.open({:spawn_executable, @sykli}, [
          :binary,
          :exit_status,
          :stderr_to_stdout,
          {:line, 65_536},
          cd: ctx.work,
          env: [{~c"SYKLI_CWD", false}],
          args: ~w(run --target=k8s --run-id int1 --kubeconfig #{ctx.kubeconfig} --pipeline #{file})
        ])

      {:os_pid, pid} = Port.info(port, :os_pid)
      assert_receive {^port, {:data, {:eol, "[slow] slow-started"}}}, 120_000
      assert RealCluster.jobs(ctx.info, ctx.ns) == ["sykli-slow-int1"]
      {_, 0} = System.cmd("kill", ["-INT", to_string(pid)])
      assert_receive {^port, {:exit_status, 130}}, 60_000
      out = collect_lines(port)
      assert out =~ ~r/■ slow cancelled after [0-9.]+s/
      assert out =~ "■ after cancelled: not started: the run was interrupted"
      assert out =~ "run cancelled: 2 cancelled"
      assert RealCluster.jobs(ctx.info, ctx.ns) == []
    end
  end

  defp collect_lines(port, acc \\ []) do
    receive do
      {^port, {:data, {_, line}}} -> collect_lines(port, [line | acc])
    after
      0 -> acc |> Enum.reverse() |> Enum.join("\n")
    end
  end

  describe "what is built" do
    test "a dirty tree is refused before any API call; --allow-dirty builds HEAD as committed", ctx do
      write!(ctx.work, "notes.txt", "local\n")
      write!(ctx.work, "Cargo.toml", "changed\n")

      file =
        pipeline!(ctx, [
          checking("build", "/app", ctx.sha, %{
            command: ~s|test ! -e notes.txt && grep -q package Cargo.toml && echo clean-head|
          })
        ])

      # A kubeconfig that does not exist: the refusal comes before any connection.
      {out, 1} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}), kubeconfig: "/nonexistent")
      assert out =~ "sykli: the working tree has 2 uncommitted changes"
      assert out =~ "\n  M  Cargo.toml\n" or out =~ "\n   M Cargo.toml\n" or out =~ " M Cargo.toml\n"
      assert out =~ "?? notes.txt"
      assert out =~ "ways forward:"
      assert out =~ "--allow-dirty builds HEAD"
      assert out =~ "--source-strategy=pvc uploads the working tree as it is"

      {out, 0} = sykli(ctx, ~w(run --target=k8s --allow-dirty --pipeline #{file}))

      assert out =~
               "warning: --allow-dirty: building HEAD #{String.slice(ctx.sha, 0, 12)} as committed; 2 uncommitted changes are not included"

      assert out =~ "[build] clean-head"
    end

    test "an unpushed HEAD is refused before any API call, also when only the remote can tell", ctx do
      write!(ctx.work, "local.txt", "x\n")
      local = commit_all!(ctx.work, "not pushed")
      file = pipeline!(ctx, [checking("build", "/app", local)])

      {out, 1} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}), kubeconfig: "/nonexistent")

      assert out =~
               "HEAD #{String.slice(local, 0, 12)} is not on origin (no remote-tracking branch contains it)"

      assert out =~ "push it (git push origin HEAD:main)"
      assert out =~ "--git-ref REF"

      # No remote-tracking refs (as in many CI checkouts): the remote itself is asked.
      git!(ctx.work, ["update-ref", "-d", "refs/remotes/origin/main"])
      {out, 1} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}), kubeconfig: "/nonexistent")
      assert out =~ "the remote has no branch or tag that contains it"

      git!(ctx.work, ["push", "-q", "origin", "main"])
      git!(ctx.work, ["update-ref", "-d", "refs/remotes/origin/main"])
      {out, 0} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}))
      assert out =~ "[build] build-ok"
    end

    test "--git-ref builds a branch, a tag or a commit of the remote; a missing ref is an error", ctx do
      first = ctx.sha
      write!(ctx.work, "second.txt", "2\n")
      second = commit_all!(ctx.work, "second")
      git!(ctx.work, ["tag", "-a", "-m", "release", "v1"])
      git!(ctx.work, ["checkout", "-q", "-b", "feature"])
      write!(ctx.work, "feature.txt", "f\n")
      feature = commit_all!(ctx.work, "feature")
      git!(ctx.work, ["push", "-q", "origin", "main", "feature", "v1"])
      git!(ctx.work, ["checkout", "-q", "main"])
      # Local changes do not matter when the remote's ref is built.
      write!(ctx.work, "scratch.txt", "local\n")

      for {ref, expected} <- [
            {"feature", feature},
            {"v1", second},
            {first, first},
            {String.slice(first, 0, 9), first}
          ] do
        file = pipeline!(ctx, [checking("build", "/app", expected)])
        {out, status} = sykli(ctx, ~w(run --target=k8s --git-ref #{ref} --pipeline #{file}))
        assert status == 0, "--git-ref #{ref}: #{out}"
        assert out =~ "commit #{String.slice(expected, 0, 12)}"
        assert out =~ "[build] build-ok"
      end

      file = pipeline!(ctx, [checking("build", "/app", first)])

      {out, 1} =
        sykli(ctx, ~w(run --target=k8s --git-ref featur --pipeline #{file}), kubeconfig: "/nonexistent")

      assert out =~
               ~s[sykli: "featur" is no branch, tag or commit of remote origin (did you mean feature?)]

      assert RealCluster.jobs(ctx.info, ctx.ns) == []
    end
  end

  describe "settings" do
    test "precedence: --namespace over the task's own over the config file over SYKLI_K8S_NAMESPACE", ctx do
      # The namespaces the real run creates are this test's own (the plane is shared).
      task_ns = RealCluster.namespace!("task-ns")
      team_b = RealCluster.namespace!("team-b")

      file =
        pipeline!(ctx, [
          %{name: "own", container: "any", command: "true", k8s: %{namespace: task_ns}},
          %{name: "plain", container: "any", command: "true"}
        ])

      namespaces = fn args, opts ->
        {out, 0} =
          sykli(
            ctx,
            ~w(run --target=k8s --dry-run -o json --pipeline #{file}) ++ args,
            [stderr: false] ++ opts
          )

        Enum.map(SykliK8s.JSON.decode!(out)["items"], & &1["metadata"]["namespace"])
      end

      env = [env: [{"SYKLI_K8S_NAMESPACE", "from-env"}]]
      assert namespaces.([], env) == [task_ns, ctx.ns]
      assert namespaces.(~w(-n from-flag), env) == ["from-flag", "from-flag"]

      write!(ctx.work, ".sykli/config.exs", "import Config\nconfig :sykli, :k8s, create_namespace: true\n")
      commit_all!(ctx.work, "no namespace in the config")
      git!(ctx.work, ["push", "-q", "origin", "main"])
      assert namespaces.([], env) == [task_ns, "from-env"]
      assert namespaces.([], []) == [task_ns, "sykli"]

      # The real run uses the same settings: its Jobs go to the namespace the config names.
      write!(
        ctx.work,
        ".sykli/config.exs",
        "import Config\nconfig :sykli, :k8s, namespace: \"#{team_b}\", create_namespace: true\n"
      )

      commit_all!(ctx.work, "team-b")
      git!(ctx.work, ["push", "-q", "origin", "main"])
      {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}), stderr: false)
      assert %{"namespace" => ^team_b} = hd(events(out))

      names =
        Enum.map(RealCluster.api_get!(ctx.info, "/api/v1/namespaces")["items"], & &1["metadata"]["name"])

      assert team_b in names and task_ns in names
    end

    test "every config error names the key, the value and the file, and nothing runs", ctx do
      config = Path.join(ctx.work, ".sykli/config.exs")
      file = pipeline!(ctx, [%{name: "t", container: "any", command: "true"}])

      for {body, expected} <- [
            {"config :sykli, :k8s, namespce: \"x\"",
             "unknown key :namespce in config :sykli, :k8s (did you mean :namespace?)"},
            {"config :sykli, :k8s, clone_depth: 0",
             ":clone_depth is 0, but must be a positive integer or :full"},
            {"config :sykli, :k8s, source_strategy: :rsync",
             ":source_strategy is :rsync, but must be :git_clone, :pvc or :s3"},
            {"config :sykli, :k8s, namespace: \"Bad_NS\"",
             ~s(:namespace is "Bad_NS", but must be a namespace name)},
            {"config :sykli, :k8s, [1, 2]", "config :sykli, :k8s must be a keyword list"},
            {"raise \"broken config\"", "could not be read: broken config"}
          ] do
        File.write!(config, "import Config\n" <> body <> "\n")

        for args <- [~w(run --target=k8s --allow-dirty --pipeline #{file}), ~w(info)] do
          {out, status} = sykli(ctx, args)
          assert status == 1, "#{body}: #{out}"
          assert out =~ "sykli: #{config}", "#{body}: #{out}"
          assert out =~ expected, "#{body}: #{out}"
        end
      end

      assert RealCluster.api_get!(ctx.info, "/api/v1/namespaces")["items"]
             |> Enum.all?(&(&1["metadata"]["name"] != ctx.ns))
    end

    test "info --check: the cluster is reachable and what the Jobs reference exists", ctx do
      pipeline = %{
        version: "2",
        tasks: [
          %{
            name: "t",
            container: "any",
            command: "true",
            k8s: %{volumes: [%{name: "tls", mount_path: "/tls", secret: %{name: "tls-cert"}}]}
          }
        ]
      }

      write!(ctx.work, ".sykli/pipeline.json", SykliK8s.JSON.encode!(pipeline))
      commit_all!(ctx.work, "pipeline")

      {out, 1} = sykli(ctx, ~w(info --check))
      assert out =~ ~r/Cluster +https:\/\/127\.0\.0\.1:\d+\/: reachable/
      assert out =~ "✗ Secret #{ctx.ns}/tls-cert does not exist (volume tls needs it)"

      RealCluster.api_post!(ctx.info, "/api/v1/namespaces", %{metadata: %{name: ctx.ns}})

      RealCluster.api_post!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/secrets", %{
        metadata: %{name: "tls-cert"},
        stringData: %{"tls.crt" => "x"}
      })

      {out, 0} = sykli(ctx, ~w(info --check --json), stderr: false)

      assert %{"check" => %{"problems" => [], "namespace" => ns, "pipeline_checked" => true}} =
               SykliK8s.JSON.decode!(out)

      assert ns == ctx.ns

      {out, 1} = sykli(ctx, ~w(info --check), kubeconfig: "/nonexistent")
      assert out =~ "sykli: cannot read the kubeconfig /nonexistent"
    end
  end
end
