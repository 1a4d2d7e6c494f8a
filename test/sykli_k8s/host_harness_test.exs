defmodule SykliK8s.HostHarnessTest.Git do
  @moduledoc false
  # detect/1 doubles, each answering one shape; Clean also tells the test which path it got.
  def ctx(dirty),
    do: %{url: "https://example.com/o/r.git", branch: "main", sha: String.duplicate("a", 40), dirty: dirty}

  defmodule Clean do
    @moduledoc false
    def detect(path) do
      send(self(), {:detect, path})
      SykliK8s.HostHarnessTest.Git.ctx(false)
    end
  end

  defmodule Dirty do
    @moduledoc false
    def detect(_path), do: SykliK8s.HostHarnessTest.Git.ctx(true)
  end

  defmodule Wrapped do
    @moduledoc false
    def detect(_path), do: {:ok, SykliK8s.HostHarnessTest.Git.ctx(false)}
  end

  defmodule NotRepo do
    @moduledoc false
    def detect(_path), do: {:error, :not_a_git_repo}
  end
end

defmodule SykliK8s.HostHarnessTest.Recorder do
  @moduledoc false
  # A target that reports every call to the test process and does what the test's script
  # (put in the test process's dictionary, read by setup/1, which sykli runs in the caller)
  # says. run_task's script gets the task and the attempt number (counted across the run).
  @behaviour Sykli.Target.Behaviour

  @impl true
  def name, do: "recorder"
  @impl true
  def available?, do: {:ok, %{}}

  @impl true
  def setup(opts) do
    script = Process.get(:script, %{})
    send(self(), {:setup, opts, self()})

    case script[:setup] do
      nil -> {:ok, %{workdir: opts[:workdir], test: self(), script: script, attempts: :counters.new(1, [])}}
      fun -> fun.(opts)
    end
  end

  @impl true
  def teardown(state) do
    send(state.test, :teardown)
    :ok
  end

  @impl true
  def run_task(task, state, run_opts) do
    :counters.add(state.attempts, 1, 1)
    send(state.test, {:run_task, task.name, run_opts, self(), Process.group_leader()})
    (state.script[:run_task] || fn _task, _attempt -> :ok end).(task, :counters.get(state.attempts, 1))
  end

  @impl true
  def resolve_secret(name, state) do
    send(state.test, {:resolve_secret, name})
    if name in (state.script[:secrets] || []), do: {:ok, "value"}, else: {:error, :not_found}
  end

  @impl true
  def create_volume(_name, _opts, _state), do: {:error, :unused}
  @impl true
  def artifact_path(task, name, _workdir, _state), do: "/artifacts/#{task}/#{name}"

  @impl true
  def copy_artifact(src, dest, workdir, state) do
    send(state.test, {:copy_artifact, src, dest, workdir})
    (state.script[:copy_artifact] || fn -> :ok end).()
  end

  @impl true
  def start_services(task_name, services, state) do
    send(state.test, {:start_services, task_name, services})
    (state.script[:start_services] || fn -> {:ok, nil} end).()
  end

  @impl true
  def stop_services(info, state) do
    send(state.test, {:stop_services, info})
    :ok
  end
end

defmodule SykliK8s.HostHarnessTest.Judge do
  @moduledoc false
  # The recorder plus evaluate_success_criteria/4.
  defdelegate name, to: SykliK8s.HostHarnessTest.Recorder
  defdelegate setup(opts), to: SykliK8s.HostHarnessTest.Recorder
  defdelegate teardown(state), to: SykliK8s.HostHarnessTest.Recorder
  defdelegate run_task(task, state, opts), to: SykliK8s.HostHarnessTest.Recorder
  defdelegate start_services(name, services, state), to: SykliK8s.HostHarnessTest.Recorder
  defdelegate stop_services(info, state), to: SykliK8s.HostHarnessTest.Recorder

  def evaluate_success_criteria(task, criteria, state, opts) do
    send(state.test, {:evaluate, task.name, criteria, opts})
    {:ok, [%Sykli.SuccessCriteria.Result{index: 0, type: "exit_code", status: :passed, message: "ok"}]}
  end
end

defmodule SykliK8s.HostHarnessTest do
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO

  alias Sykli.Executor.TaskResult
  alias SykliK8s.HostHarnessTest.{Git, Judge, Recorder}
  alias SykliK8s.Test.Host

  # Crashing task processes are logged; keep them out of the test output.
  @moduletag :capture_log

  defp pipeline(tasks, extra \\ %{}), do: Map.merge(%{"version" => "1", "tasks" => tasks}, extra)
  defp task(name, extra \\ %{}), do: Map.merge(%{"name" => name, "command" => "echo #{name}"}, extra)

  defp run(tasks, opts \\ []) do
    Host.run(
      ".",
      Keyword.merge([target: Recorder, git_context_module: Git.Clean, pipeline: pipeline(tasks)], opts)
    )
  end

  describe "setup/1" do
    test "gets sykli's keys in sykli's order, workdir as typed, in the calling process" do
      assert {:ok, [%TaskResult{name: "a", status: :passed}]} =
               run([task("a")], timeout: 60_000, filter: "a", git_ssh_secret: "ssh", git_token_secret: "tok")

      me = self()
      assert_received {:detect, "."}
      assert_received {:setup, opts, ^me}

      assert Keyword.keys(opts) == [
               :timeout,
               :filter,
               :target,
               :git_context,
               :git_ssh_secret,
               :git_token_secret,
               :workdir
             ]

      assert opts[:timeout] == 60_000
      assert opts[:target] == Recorder
      assert opts[:git_context] == Git.ctx(false)
      assert opts[:workdir] == "."
      assert is_function(opts[:filter], 1)
      assert_received :teardown
    end

    test "without the optional flags only target, git_context and workdir; allow_dirty and max_parallel never reach it" do
      assert {:ok, _} = run([task("a")], allow_dirty: true, max_parallel: 1, git_context_module: Git.Dirty)
      assert_received {:setup, opts, _}
      assert Keyword.keys(opts) == [:target, :git_context, :workdir]
      assert opts[:git_context].dirty == true
    end

    test "an {:error, r} answer is an internal error whose cause is r; nothing runs, no teardown" do
      Process.put(:script, %{setup: fn _ -> {:error, :no_cluster} end})

      assert {:error,
              %Sykli.Error{code: "internal_error", message: "target setup failed", cause: :no_cluster}} =
               run([task("a")])

      refute_received {:run_task, _, _, _, _}
      refute_received :teardown
    end

    test "any other answer is a CaseClauseError, after which stdout is back" do
      Process.put(:script, %{setup: fn _ -> :ok end})
      gl = Process.group_leader()
      assert_raise CaseClauseError, fn -> run([task("a")]) end
      assert Process.group_leader() == gl
    end
  end

  describe "git preparation" do
    test "a detect answering {:ok, ctx} crashes as in sykli" do
      assert_raise CaseClauseError, fn -> run([task("a")], git_context_module: Git.Wrapped) end
      refute_received {:setup, _, _}
    end

    test "a dirty tree without allow_dirty is uncommitted_changes, before setup" do
      assert {:error, %Sykli.Error{code: "uncommitted_changes"} = e} =
               run([task("a")], git_context_module: Git.Dirty)

      assert Enum.any?(e.hints, &(&1 =~ "--allow-dirty"))
      refute_received {:setup, _, _}
      assert Host.render(e) =~ "error[uncommitted_changes]: uncommitted changes in working directory"
      assert Host.render(e) =~ "help: or use --allow-dirty to proceed anyway (not recommended)"

      assert Sykli.Error.Formatter.format(e, no_color: true) =~
               "╭─ error[uncommitted_changes]: uncommitted changes in ..."
    end

    test "not a repository is not_a_git_repo" do
      assert {:error, %Sykli.Error{code: "not_a_git_repo"}} =
               run([task("a")], git_context_module: Git.NotRepo)
    end
  end

  describe "the executor" do
    test "run_opts is exactly workdir, network, progress; the network comes from start_services" do
      Process.put(:script, %{start_services: fn -> {:ok, {"net-1", [:c]}} end})
      svc = %{"image" => "redis:7", "name" => "redis"}
      assert {:ok, [_]} = run([task("a", %{"services" => [svc]})])

      assert_received {:start_services, "a", [%Sykli.Graph.Service{image: "redis:7", name: "redis"}]}
      assert_received {:run_task, "a", run_opts, pid, _gl}
      assert run_opts == [workdir: ".", network: "net-1", progress: {1, 1}]
      assert pid != self()
      assert_received {:stop_services, {"net-1", [:c]}}
    end

    test "stdout of setup and tasks is discarded and restored after; stderr still reaches the user" do
      Process.put(:script, %{
        setup: fn opts ->
          IO.puts("setup stdout")

          {:ok,
           %{
             workdir: opts[:workdir],
             test: self(),
             script: Process.get(:script),
             attempts: :counters.new(1, [])
           }}
        end,
        run_task: fn _task, _ ->
          IO.puts("task stdout")
          IO.puts(:stderr, "task stderr")
          :ok
        end
      })

      stderr =
        capture_io(:stderr, fn ->
          stdout =
            capture_io(fn ->
              assert {:ok, [_]} = run([task("a")])
              IO.write("after")
            end)

          assert stdout == "after"
        end)

      assert stderr == "task stderr\n"
      assert_received {:run_task, "a", _, _, task_gl}
      refute task_gl == Process.group_leader()
    end

    test "retries call run_task, start_services and stop_services again" do
      Process.put(:script, %{
        run_task: fn _task, n -> if n < 3, do: {:error, :flaky}, else: {:ok, "third"} end
      })

      assert {:ok, [%TaskResult{status: :passed, output: "third"}]} = run([task("a", %{"retry" => 2})])

      for _ <- 1..3 do
        assert_received {:start_services, "a", []}
        assert_received {:run_task, "a", _, _, _}
        assert_received {:stop_services, nil}
      end

      refute_received {:run_task, _, _, _, _}
    end

    test "a final failure is :failed with the error, its output from a Sykli.Error, and what the renderer shows" do
      logs = "compiling\nmain.go:3:1: undefined: x\n"
      err = Sykli.Error.task_failed("a", "go build", 2, logs, duration_ms: 1200)
      Process.put(:script, %{run_task: fn _, _ -> {:error, err} end})

      assert {:error, [%TaskResult{status: :failed, error: ^err, output: ^logs, command: "echo a"} = r]} =
               run([task("a")])

      assert Host.render(r) == "      compiling\n      main.go:3:1: undefined: x"

      bare = %TaskResult{r | output: nil, error: %{err | output: ""}}
      assert Host.render(bare) == "      task 'a' failed\n      command misuse - check arguments"
      assert Host.render(%TaskResult{r | output: nil, error: :job_failed}) == "      :job_failed"
    end

    test "an answer outside sykli's shapes, a raise and an exit are :errored; later levels are :blocked" do
      Process.put(:script, %{
        run_task: fn
          %{name: "odd"}, _ -> {:ok, "out", :extra}
          %{name: "boom"}, _ -> raise "no job"
          %{name: "gone"}, _ -> exit(:killed)
          _, _ -> :ok
        end
      })

      assert {:error, results} =
               run([
                 task("odd"),
                 task("boom"),
                 task("gone"),
                 task("fine"),
                 task("next", %{"depends_on" => ["fine"]})
               ])

      by_name = Map.new(results, &{&1.name, &1})
      for name <- ~w(odd boom gone), do: assert(%TaskResult{status: :errored} = by_name[name])
      assert by_name["boom"].error.message =~ "task process crashed"
      assert by_name["fine"].status == :passed
      assert %TaskResult{status: :blocked, error: :dependency_failed} = by_name["next"]
      refute_received {:run_task, "next", _, _, _}
      assert_received :teardown
    end

    test "task_inputs copy the producer's declared output path; secrets go through resolve_secret" do
      Process.put(:script, %{secrets: ["TOKEN"]})

      tasks = [
        task("build", %{"outputs" => ["./app"]}),
        task("ship", %{
          "depends_on" => ["build"],
          "task_inputs" => [%{"from_task" => "build", "output" => "output_0", "dest" => "/in/app"}],
          "secrets" => ["TOKEN"]
        })
      ]

      assert {:ok, [%{name: "build"}, %{name: "ship"}]} = run(tasks)
      assert_received {:copy_artifact, "./app", "/in/app", "."}
      assert_received {:resolve_secret, "TOKEN"}
      assert_received {:run_task, "ship", [workdir: ".", network: nil, progress: {2, 2}], _, _}
    end

    test "a missing secret is :errored with missing_secrets; a failed copy is {:copy_failed, src, r}" do
      Process.put(:script, %{copy_artifact: fn -> {:error, :nope} end})

      tasks = [
        task("build", %{"outputs" => %{"bin" => "./bin"}}),
        task("needs", %{"secrets" => ["GONE"]}),
        task("ship", %{
          "depends_on" => ["build"],
          "task_inputs" => [%{"from_task" => "build", "output" => "bin", "dest" => "bin"}]
        })
      ]

      assert {:error, results} = run(tasks)
      by_name = Map.new(results, &{&1.name, &1})
      assert %TaskResult{status: :errored, error: %Sykli.Error{code: "missing_secrets"}} = by_name["needs"]
      assert %TaskResult{status: :blocked} = by_name["ship"]

      assert {:error, [_, %TaskResult{name: "ship", status: :errored, error: {:copy_failed, "./bin", :nope}}]} =
               run([hd(tasks), List.last(tasks)])
    end

    test "criteria without evaluate_success_criteria/4 fail as unsupported; with it, it gets the extra opts" do
      criteria = [%{"type" => "exit_code", "equals" => 0}]
      tasks = [task("a", %{"success_criteria" => criteria})]
      p = pipeline(tasks, %{"version" => "3"})

      assert {:error,
              [%TaskResult{status: :failed, error: e, success_criteria_results: [%{status: :unsupported}]}]} =
               run(tasks, pipeline: p)

      assert e.code == "unsupported_success_criteria_for_target"
      assert e.message == "target 'recorder' does not support success_criteria evaluation for task 'a'"

      assert {:ok, [%TaskResult{status: :passed, success_criteria_results: [_]}]} =
               run(tasks, pipeline: p, target: Judge)

      assert_received {:evaluate, "a", ^criteria, opts}

      assert Keyword.take(opts, [:workdir, :network, :progress]) == [
               workdir: ".",
               network: nil,
               progress: {1, 1}
             ]

      assert opts[:command_exit_code] == 0 and opts[:command_output] == nil and is_integer(opts[:duration_ms])
    end

    test "a state without workdir crashes every task with a KeyError, as upstream k8s does" do
      Process.put(:script, %{setup: fn _ -> {:ok, %{test: self()}} end})
      assert {:error, [%TaskResult{status: :errored, error: e}]} = run([task("a")])
      assert e.message =~ "task process crashed: {{:badkey, :workdir"
    end
  end

  describe "Sykli.Graph.parse_tasks/1" do
    test "gives sykli's task shapes and drops the pipeline's resources" do
      [t] =
        Sykli.Graph.parse_tasks(%{
          "version" => "2",
          "resources" => %{"src:." => %{"type" => "directory", "path" => "."}},
          "tasks" => [
            task("a", %{
              "timeout" => 30,
              "outputs" => ["out/a", "out/b"],
              "mounts" => [%{"resource" => "src:.", "path" => "/app", "type" => "directory"}],
              "k8s" => %{"memory" => "1Gi", "gpu" => 1},
              "task_inputs" => [%{"from_task" => "b", "output" => "x", "dest" => "/x"}]
            })
          ]
        })

      assert %Sykli.Graph.Task{name: "a", kind: :task, timeout: 30, success_criteria: []} = t
      assert t.mounts == [%{resource: "src:.", path: "/app", type: "directory"}]
      assert t.outputs == %{"output_0" => "out/a", "output_1" => "out/b"}
      assert t.task_inputs == [%Sykli.Graph.TaskInput{from_task: "b", output: "x", dest: "/x"}]
      assert t.k8s == %Sykli.Target.K8sOptions{gpu: 1}
      refute Map.has_key?(t, :resources)
      assert_raise UndefinedFunctionError, fn -> t[:name] end
    end

    test "k8s maps parse into the nested structs; nil and %{} are nil" do
      k8s = %{
        "namespace" => "ci",
        "resources" => %{"cpu" => "500m"},
        "tolerations" => [%{"key" => "gpu"}],
        "affinity" => %{"node_affinity" => %{"required_labels" => %{"zone" => "a"}}},
        "volumes" => [%{"name" => "cfg", "mount_path" => "/cfg", "config_map" => %{"name" => "c"}}]
      }

      opts = Sykli.Target.K8sOptions.parse(k8s)
      assert %Sykli.Target.K8sOptions.Resources{cpu: "500m"} = opts.resources
      assert [%Sykli.Target.K8sOptions.Toleration{key: "gpu", operator: "Equal"}] = opts.tolerations
      assert opts.affinity.node_affinity.required_labels == %{"zone" => "a"}
      assert [%{config_map: %Sykli.Target.K8sOptions.ConfigMapVolume{name: "c"}}] = opts.volumes
      assert Sykli.Target.K8sOptions.parse(nil) == nil and Sykli.Target.K8sOptions.parse(%{}) == nil

      assert Sykli.Target.K8sOptions.validate!(
               Sykli.Target.K8sOptions.parse(%{"resources" => %{"memory" => "2gb"}})
             ) ==
               "k8s.resources.memory: invalid memory format, use Ki/Mi/Gi/Ti (e.g., '512Mi', '4Gi') (did you mean 'Gi'?) (got \"2gb\")"
    end

    test "an invalid mount raises sykli's invalid_mount error" do
      bad = %{
        "tasks" => [task("a", %{"mounts" => [%{"resource" => "x", "path" => "/x", "type" => "tmpfs"}]})]
      }

      error = assert_raise Sykli.Error, fn -> Sykli.Graph.parse_tasks(bad) end
      assert %{code: "invalid_mount", task: "a"} = error
    end
  end

  test "the Error constructors give upstream's codes and messages" do
    assert %{code: "task_failed", type: :execution, step: :run, message: "task 'a' failed", notes: notes} =
             Sykli.Error.task_failed("a", "make", 127, "sh: make: command not found", duration_ms: 1500)

    assert notes == ["task ran for 1.5s before failing"]

    assert Sykli.Error.task_failed("a", "make", 127, "sh: make: command not found").hints == [
             "command not found - check PATH or install missing tool",
             "install the missing command or check your PATH"
           ]

    assert %{code: "task_timeout", message: "task 'a' timed out after 5.0m"} =
             Sykli.Error.task_timeout("a", "x", 300_000)

    assert %{code: "cluster_unreachable", notes: [":econnrefused"]} =
             Sykli.Error.k8s_connection_failed(:econnrefused)

    assert %{code: "resource_failed", message: "failed to create Job 'j'"} =
             Sykli.Error.k8s_resource_failed("Job", "j", :r)

    assert %{code: "missing_secrets", message: "task 'a' requires secrets: A, B"} =
             Sykli.Error.missing_secrets("a", ["A", "B"])

    assert %{code: "internal_error", type: :internal} = Sykli.Error.wrap({:weird, 1})
    assert Exception.message(Sykli.Error.internal("boom")) == "[internal_error] boom"
  end
end
