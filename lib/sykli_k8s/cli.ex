defmodule SykliK8s.CLI do
  @moduledoc """
  The `sykli` command line. `bin/sykli` runs it with the user's working directory as the
  repository; `mix sykli_k8s …` runs the same code.
  """

  @usage """
  usage: sykli <command> [options]

  commands:
    info            show the git context, the Kubernetes settings a run would use and
                    what each Job of the pipeline fetches
    run             run a pipeline on Kubernetes (--target=k8s)
    help            show this help

  options for info:
    -C, --dir DIR       the repository (default: the current directory)
    --json              print JSON instead of text
    --max-paths N       how many changed paths to list (default 10)
    --check             also ask the cluster: reachable, and every namespace, Secret,
                        ConfigMap and key the pipeline's Jobs reference exists (and,
                        with the s3 strategy, that the bucket is there and listable)
    --pipeline FILE     the pipeline shown and checked (default .sykli/pipeline.json)
    -n, --namespace NS, --context NAME, --kubeconfig FILE   as for run

  options for run:
    --target k8s            run on Kubernetes (the only target here)
    --pipeline FILE         the pipeline JSON the sykli SDKs emit, or - for stdin
                            (default: .sykli/pipeline.json in the repository)
    -j, --jobs N            run up to N independent tasks at once (default 4)
    --git-ref REF           build a branch, tag or commit of the remote instead of HEAD
    --allow-dirty           build HEAD as committed despite uncommitted changes
    --source-strategy S     git_clone (default), pvc or s3
    -n, --namespace NS      the namespace (over the task's own, the config file's and
                            SYKLI_K8S_NAMESPACE; default sykli)
    --context NAME          the kubeconfig context (default: the current context)
    --kubeconfig FILE       the kubeconfig (default: KUBECONFIG, then ~/.kube/config)
    --keep-failed           keep failed Jobs for debugging (kubectl describe job …)
    --json                  print events and the summary as JSON lines
    --dry-run               print the Jobs that would be submitted, submit nothing
    -o, --output FMT        with --dry-run: yaml (default; multi-document) or json (a List)
    -C, --dir DIR           the repository (default: the current directory)
    --run-id ID             the run id in Job names and labels (default: random)

  Settings also come from .sykli/config.exs (config :sykli, :k8s, namespace: …);
  `sykli info` shows each one and where it comes from.
  Exit status: 0 all tasks succeeded, 1 a task failed or the run could not start,
  2 usage error, 130 interrupted (Ctrl-C; running Jobs are deleted).
  """

  @doc "Runs the command line and halts the VM with its exit status."
  @spec main([String.t()]) :: no_return()
  def main(argv \\ System.argv()) do
    trap_interrupts()
    System.halt(run(argv))
  end

  # Ctrl-C: bin/sykli turns SIGINT into SIGTERM for the VM (which ignores SIGINT itself).
  # During a run SIGTERM interrupts it (its Jobs are deleted, the summary printed); before,
  # there is nothing to clean up and the command stops at once.
  defp trap_interrupts do
    {:ok, _} =
      System.trap_signal(:sigterm, fn ->
        case Process.whereis(:sykli_run) do
          nil -> System.halt(130)
          pid -> SykliK8s.Run.interrupt(pid)
        end
      end)

    # The VM's own handler would stop it on SIGTERM, with the run's Jobs left behind.
    :gen_event.delete_handler(:erl_signal_server, :erl_signal_handler, :ok)
  end

  @doc "Runs the command line; returns the exit status."
  @spec run([String.t()]) :: non_neg_integer()
  def run(argv) do
    case argv do
      ["info" | rest] -> info(rest)
      ["run" | rest] -> run_cmd(rest)
      [help] when help in ["help", "-h", "--help"] -> out(@usage)
      [] -> usage_error("no command given")
      [other | _] -> usage_error("unknown command #{inspect(other)}")
    end
  end

  defp info(argv) do
    switches = [
      json: :boolean,
      dir: :string,
      max_paths: :integer,
      check: :boolean,
      pipeline: :string,
      namespace: :string,
      context: :string,
      kubeconfig: :string,
      help: :boolean
    ]

    case OptionParser.parse(argv, strict: switches, aliases: [C: :dir, h: :help, n: :namespace]) do
      {opts, [], []} ->
        if opts[:help], do: out(@usage), else: do_info(opts)

      {_, [extra | _], _} ->
        usage_error("info takes no argument #{inspect(extra)} (use -C DIR for another repository)")

      {_, _, [{flag, _} | _]} ->
        usage_error("info does not understand #{flag}")
    end
  end

  defp do_info(opts) do
    dir = opts[:dir] || System.get_env("SYKLI_CWD") || File.cwd!()
    flags = %{namespace: opts[:namespace], context: opts[:context], kubeconfig: opts[:kubeconfig]}

    with {:ok, ctx} <- SykliK8s.Git.detect(dir, max_paths: opts[:max_paths] || 10),
         :ok <- SykliK8s.Config.check_flags(flags),
         {:ok, settings} <- SykliK8s.Config.effective(ctx.root, flags),
         {:ok, check} <- if(opts[:check], do: check(ctx, flags, opts), else: {:ok, nil}) do
      fetches = fetches(ctx, settings, flags, opts[:pipeline])

      if opts[:json] do
        data = info_map(ctx) |> Map.put(:k8s, settings_map(settings))
        data = if fetches, do: Map.put(data, :fetch, fetches_map(fetches)), else: data
        print_json(if check, do: Map.put(data, :check, check), else: data)
      else
        IO.write(
          render_info(ctx) <>
            render_settings(settings) <>
            render_fetches(fetches) <> if(check, do: render_check(check), else: "")
        )
      end

      Enum.each(ctx.warnings, &IO.puts(:stderr, "warning: " <> &1))
      if check && check.problems != [], do: 1, else: 0
    else
      {:error, %SykliK8s.Error{message: message}} -> fail(message)
    end
  end

  # What each Job of the pipeline fetches, as the Jobs a dry run builds say (git clone:
  # their sykli.io/fetch annotation); nil without a pipeline to show.
  defp fetches(ctx, settings, flags, pipeline) do
    setting = fn key -> Enum.find_value(settings, fn {k, value, _} -> if k == key, do: value end) end

    case {read_pipeline(pipeline, ctx.root), setting.(:source_strategy)} do
      {{:error, _}, _} when pipeline == nil -> nil
      {{:error, %SykliK8s.Error{message: message}}, _} -> {:error, message}
      {{:ok, text}, :git_clone} -> job_fetches(text, ctx, flags, setting.(:artifact_pvc))
      {{:ok, _}, strategy} -> {:strategy, strategy}
    end
  end

  defp job_fetches(text, ctx, flags, artifact_pvc) do
    with {:ok, state} <-
           SykliK8s.Target.setup(
             Map.to_list(flags) ++
               [
                 git_context: %{ctx | dirty: false},
                 workdir: ctx.root,
                 dry_run: true,
                 namespace_from_flag: flags.namespace != nil,
                 # As a run of this command: the artifact claim only when the config names one.
                 artifact_pvc: artifact_pvc || false
               ]
           ),
         {:ok, list} <- SykliK8s.Target.render_pipeline(text, state, :json),
         {:ok, %{"items" => jobs}} <- SykliK8s.JSON.decode(list) do
      {:ok,
       Enum.map(jobs, fn %{"metadata" => meta} ->
         %{
           task: meta["annotations"]["sykli.io/task-name"],
           job: meta["name"],
           fetch: meta["annotations"]["sykli.io/fetch"] || "nothing (no source mounted)"
         }
       end)}
    else
      {:error, %SykliK8s.Error{message: message}} -> {:error, message}
    end
  end

  defp fetches_map({:ok, jobs}), do: %{jobs: jobs}
  defp fetches_map({:error, message}), do: %{error: message}
  defp fetches_map({:strategy, strategy}), do: %{strategy: strategy}

  defp render_fetches(nil), do: ""
  defp render_fetches({:error, message}), do: row({"Fetch", "✗ " <> message})

  defp render_fetches({:strategy, strategy}),
    do: row({"Fetch", "every Job gets the whole source (source_strategy #{inspect(strategy)})"})

  defp render_fetches({:ok, []}), do: row({"Fetch", "the pipeline has no task"})

  defp render_fetches({:ok, jobs}) do
    width = jobs |> Enum.map(&String.length(&1.task)) |> Enum.max()
    row({"Fetch", Enum.map_join(jobs, "\n", &"#{String.pad_trailing(&1.task, width)}  #{&1.fetch}")})
  end

  # Connects and asks the cluster what the pipeline's Jobs would find missing.
  defp check(ctx, flags, opts) do
    with {:ok, state} <-
           SykliK8s.Target.setup(
             Map.to_list(flags) ++
               [
                 git_context: %{ctx | dirty: false},
                 workdir: ctx.root,
                 namespace_from_flag: flags.namespace != nil
               ]
           ) do
      info = SykliK8s.Native.k8s_cluster_info(state.cluster)

      explicit = opts[:pipeline] != nil

      problems =
        case read_pipeline(opts[:pipeline], ctx.root) do
          {:ok, text} -> SykliK8s.Target.check(text, state)
          {:error, _} when not explicit -> {:ok, :no_pipeline}
          {:error, _} = error -> error
        end

      with {:ok, problems} <- problems do
        bucket = bucket_check(state)

        {:ok,
         %{
           server: info.server,
           namespace: state.namespace,
           pipeline_checked: problems != :no_pipeline,
           problems: if(problems == :no_pipeline, do: [], else: problems) ++ bucket.problems,
           s3: bucket.line,
           s3_problems: bucket.problems
         }}
      end
    end
  end

  # The S3 strategy's bucket, with the credentials a run would use.
  defp bucket_check(%{source_strategy: :s3} = state) do
    case SykliK8s.Target.check_bucket(state) do
      {:ok, b} ->
        %{
          line: "s3://#{b.bucket}/#{b.prefix} (#{b.region}): listable with credentials from #{b.credentials}",
          problems: []
        }

      {:error, %SykliK8s.Error{message: message}} ->
        %{line: "✗ " <> message, problems: [message]}
    end
  end

  defp bucket_check(_state), do: %{line: nil, problems: []}

  defp render_check(check) do
    lines =
      ["#{check.server}: reachable"] ++
        if(check.s3, do: [check.s3], else: []) ++
        case {check.pipeline_checked, check.problems -- check.s3_problems} do
          {false, _} -> ["no pipeline to check (.sykli/pipeline.json, or --pipeline FILE)"]
          {true, []} -> ["every namespace, Secret, ConfigMap and key the Jobs reference exists"]
          {true, problems} -> Enum.map(problems, &("✗ " <> &1))
        end

    row({"Cluster", Enum.join(lines, "\n")})
  end

  @run_switches [
    target: :string,
    dry_run: :boolean,
    pipeline: :string,
    output: :string,
    allow_dirty: :boolean,
    git_ref: :string,
    source_strategy: :string,
    namespace: :string,
    context: :string,
    kubeconfig: :string,
    jobs: :integer,
    keep_failed: :boolean,
    json: :boolean,
    dir: :string,
    run_id: :string,
    help: :boolean
  ]

  defp run_cmd(argv) do
    case OptionParser.parse(argv,
           strict: @run_switches,
           aliases: [o: :output, n: :namespace, C: :dir, h: :help, j: :jobs]
         ) do
      {opts, [], []} -> if opts[:help], do: out(@usage), else: do_run(opts)
      {_, [extra | _], _} -> usage_error("run takes no argument #{inspect(extra)}")
      {_, _, [{flag, _} | _]} -> usage_error("run does not understand #{flag}")
    end
  end

  @strategies %{"git_clone" => :git_clone, "git-clone" => :git_clone, "pvc" => :pvc, "s3" => :s3}

  defp do_run(opts) do
    format = opts[:output] || "yaml"

    cond do
      opts[:target] != "k8s" ->
        usage_error("run needs --target=k8s (the Kubernetes target is the one this build has)")

      format not in ["yaml", "json"] ->
        usage_error("--output must be yaml or json, not #{inspect(format)}")

      opts[:jobs] != nil and opts[:jobs] < 1 ->
        usage_error("--jobs must be 1 or more, not #{opts[:jobs]}")

      opts[:source_strategy] != nil and not Map.has_key?(@strategies, opts[:source_strategy]) ->
        usage_error("--source-strategy must be git_clone, pvc or s3, not #{inspect(opts[:source_strategy])}")

      opts[:output] != nil and !opts[:dry_run] ->
        usage_error("--output prints the Jobs of a --dry-run; a run prints progress (--json for events)")

      true ->
        case prepare_run(opts, String.to_atom(format)) do
          {:ok, %{dry_run: true} = plan} -> out(plan.rendered)
          {:ok, plan} -> submit(plan)
          {:error, %SykliK8s.Error{message: message}} -> fail(message)
        end
    end
  end

  # Everything a run needs, decided before any API call: the settings, the pipeline (every
  # Job built once, so any problem shows now), and the commit the Jobs clone.
  defp prepare_run(opts, format) do
    dir = opts[:dir] || System.get_env("SYKLI_CWD") || File.cwd!()

    flags = %{
      namespace: opts[:namespace],
      context: opts[:context],
      kubeconfig: opts[:kubeconfig],
      keep_failed: opts[:keep_failed],
      source_strategy: @strategies[opts[:source_strategy]]
    }

    with {:ok, ctx} <- SykliK8s.Git.detect(dir),
         :ok <- SykliK8s.Config.check_flags(flags),
         {:ok, settings} <- SykliK8s.Config.resolve(ctx.root, flags),
         {:ok, text} <- read_pipeline(opts[:pipeline], ctx.root),
         {:ok, pipeline} <- decode_pipeline(text),
         :ok <- SykliK8s.Run.supported(pipeline),
         {:ok, source} <-
           SykliK8s.Source.prepare(ctx,
             strategy: settings.source_strategy,
             source_sync: settings[:source_sync],
             allow_dirty: opts[:allow_dirty] || false,
             git_ref: opts[:git_ref],
             unpushed: if(opts[:dry_run], do: :warn, else: :refuse)
           ),
         {:ok, state} <-
           SykliK8s.Target.setup(
             Map.to_list(flags) ++
               [
                 git_context: source.git_context,
                 workdir: ctx.root,
                 dry_run: true,
                 run_id: opts[:run_id] || SykliK8s.Target.run_id(),
                 namespace_from_flag: opts[:namespace] != nil,
                 # This command passes no artifacts between tasks (it refuses task_inputs):
                 # the artifact claim is mounted only when the config names one.
                 artifact_pvc: settings[:artifact_pvc] || false
               ]
           ),
         {:ok, state} <- dry_run_archive(state, opts[:dry_run]),
         # A dry run prints exactly these; a run only needed them to be buildable.
         {:ok, rendered} <- SykliK8s.Target.render_pipeline(text, state, format) do
      # The remote matters only when the cluster clones from it.
      ctx_warnings = if settings.source_strategy == :git_clone, do: ctx.warnings, else: []
      Enum.each(ctx_warnings ++ source.warnings, &IO.puts(:stderr, "warning: " <> &1))

      {:ok,
       %{
         dry_run: opts[:dry_run] || false,
         json: opts[:json] || false,
         jobs: opts[:jobs] || 4,
         rendered: rendered,
         pipeline: pipeline,
         state: state,
         source: source
       }}
    end
  end

  # A dry run of the S3 strategy shows the real archive (packed, not uploaded: no call).
  defp dry_run_archive(%{source_strategy: :s3} = state, true) do
    with {:ok, state, _} <- SykliK8s.Target.publish_source(state, dry_run: true), do: {:ok, state}
  end

  defp dry_run_archive(state, _), do: {:ok, state}

  defp decode_pipeline(text) do
    case SykliK8s.JSON.decode(text) do
      {:ok, %{} = pipeline} ->
        {:ok, pipeline}

      {:ok, _} ->
        {:error, %SykliK8s.Error{kind: :invalid_pipeline, message: "the pipeline must be a JSON object"}}

      {:error, e} ->
        {:error, %{e | kind: :invalid_pipeline, message: "the pipeline is not valid JSON: #{e.message}"}}
    end
  end

  defp submit(plan) do
    state = plan.state

    with {:ok, cluster} <- SykliK8s.Target.connect(Map.take(state, [:kubeconfig, :context])) do
      state = %{state | cluster: cluster, dry_run: false}
      report = if plan.json, do: SykliK8s.CLI.Progress.json(), else: SykliK8s.CLI.Progress.human()
      info = SykliK8s.Native.k8s_cluster_info(cluster)

      report.(
        {:run_started,
         %{
           run_id: state.run_id,
           tasks: length(plan.pipeline["tasks"] || []),
           source: plan.source.description,
           sha: plan.source.git_context.sha,
           namespace: state.namespace,
           server: info.server
         }}
      )

      case upload(state, plan.pipeline, report) do
        {:ok, state} -> run_pipeline(plan, state, report)
        {:error, %SykliK8s.Error{message: message}} -> fail(message)
      end
    else
      {:error, %SykliK8s.Error{message: message}} -> fail(message)
    end
  end

  # The PVC strategy uploads the working tree once, before any task.
  defp upload(%{source_strategy: :pvc} = state, _pipeline, report) do
    with {:ok, state, uploaded} <- SykliK8s.Target.upload_source(state) do
      report.({:source_uploaded, Map.put(uploaded, :claim, state.source_pvc)})
      {:ok, state}
    end
  end

  # The S3 strategy uploads the archive once; each Job's URL is signed when it is submitted.
  defp upload(%{source_strategy: :s3} = state, _pipeline, report) do
    with {:ok, state, published} <- SykliK8s.Target.publish_source(state) do
      Enum.each(published.warnings, &IO.puts(:stderr, "warning: " <> &1))
      report.({:source_published, Map.delete(published, :warnings)})
      {:ok, state}
    end
  end

  defp upload(state, _pipeline, _report), do: {:ok, state}

  defp run_pipeline(plan, state, report) do
    {status, results} =
      with_interrupts(fn ->
        SykliK8s.Run.run(plan.pipeline, state,
          jobs: plan.jobs,
          report: report,
          keep_failed: state[:keep_failed]
        )
      end)

    report.({:run_finished, status, results})

    case status do
      :succeeded -> 0
      :failed -> 1
      :cancelled -> 130
    end
  end

  # Names the running process for the SIGTERM trap `main/1` installs.
  defp with_interrupts(fun) do
    registered =
      try do
        Process.register(self(), :sykli_run)
      rescue
        ArgumentError -> false
      end

    try do
      fun.()
    after
      if registered, do: Process.unregister(:sykli_run)
    end
  end

  defp fail(message) do
    IO.puts(:stderr, "sykli: " <> message)
    1
  end

  defp read_pipeline("-", _root), do: {:ok, IO.read(:stdio, :eof) |> to_string()}

  defp read_pipeline(path, root) do
    path = path || Path.join([root, ".sykli", "pipeline.json"])

    case File.read(path) do
      {:ok, text} ->
        {:ok, text}

      {:error, reason} ->
        {:error,
         %SykliK8s.Error{
           kind: :not_found,
           message:
             "cannot read the pipeline #{path}: #{:file.format_error(reason)} " <>
               "(pass --pipeline FILE, or --pipeline - to read the JSON your sykli SDK emits on stdin)"
         }}
    end
  end

  defp settings_map(settings) do
    Map.new(settings, fn {key, value, source} -> {key, %{value: json_value(value), source: source}} end)
  end

  defp json_value(value) when is_list(value), do: Enum.map(value, &json_value/1)
  defp json_value({k, v}), do: %{to_string(k) => json_value(v)}
  defp json_value(value), do: value

  @doc "The Kubernetes settings block of `sykli info`: each value and where it comes from."
  def render_settings(settings) do
    lines =
      Enum.map(settings, fn {key, value, source} ->
        shown =
          cond do
            key == :context and is_nil(value) -> "the kubeconfig's current context"
            is_nil(value) -> "(not set)"
            true -> inspect_value(value)
          end

        "#{String.pad_trailing(to_string(key), 22)} #{shown} (#{source})"
      end)

    row({"Kubernetes", Enum.join(lines, "\n")})
  end

  defp inspect_value(value) when is_binary(value), do: value
  defp inspect_value(value), do: inspect(value)

  @doc false
  def info_map(ctx), do: ctx |> Map.from_struct() |> Map.put(:root, ctx.root)

  @doc "The human-readable `sykli info` text for a git context."
  @spec render_info(Sykli.GitContext.t()) :: String.t()
  def render_info(ctx) do
    rows = [
      {"Repository", ctx.root},
      {"Git URL", url_line(ctx)},
      {"Branch", branch_line(ctx)},
      {"SHA", ctx.sha},
      {"Status", status_line(ctx)},
      {"Pushed", pushed_line(ctx)},
      {"Submodules", if(ctx.submodules == [], do: "none", else: Enum.join(ctx.submodules, ", "))},
      {"LFS", yes_no(ctx.lfs)},
      {"Shallow", yes_no(ctx.shallow)}
    ]

    rows = if ctx.worktree, do: rows ++ [{"Worktree", "linked worktree"}], else: rows
    Enum.map_join(rows, &row/1)
  end

  defp row({label, value}) do
    [first | rest] = String.split(value, "\n")
    pad = String.duplicate(" ", 12)
    String.pad_trailing(label, 12) <> first <> "\n" <> Enum.map_join(rest, &(pad <> &1 <> "\n"))
  end

  defp url_line(%{url: nil}), do: "(none)"
  defp url_line(%{url: url, remote: remote}), do: "#{url} (remote #{remote})"

  defp branch_line(%{branch: nil}), do: "(detached HEAD)"
  defp branch_line(%{branch: b, branch_source: "HEAD"}), do: b
  defp branch_line(%{branch: b, branch_source: var}), do: "#{b} (detached HEAD; from #{var})"

  defp status_line(%{dirty: false}), do: "clean"

  defp status_line(%{changes: c}) do
    kinds =
      [
        staged: c.staged,
        modified: c.modified,
        deleted: c.deleted,
        untracked: c.untracked,
        conflicted: c.conflicted
      ]
      |> Enum.reject(fn {_, n} -> n == 0 end)
      |> Enum.map_join(", ", fn {kind, n} -> "#{n} #{kind}" end)

    header = "#{c.total} #{plural(c.total, "change")} (#{kinds})"
    paths = Enum.map(c.paths, &"  #{&1.status} #{&1.path}")
    more = c.total - length(c.paths)
    more = if more > 0, do: ["  … and #{more} more"], else: []
    Enum.join([header | paths ++ more], "\n")
  end

  defp pushed_line(%{pushed: true}), do: "yes"
  defp pushed_line(%{pushed: false}), do: "no: HEAD is on no remote-tracking branch (git push)"
  defp pushed_line(%{pushed: :unknown, shallow: true}), do: "unknown: the clone is shallow"
  defp pushed_line(%{pushed: :unknown}), do: "unknown: no remote-tracking branches (git fetch)"

  defp yes_no(true), do: "yes"
  defp yes_no(false), do: "no"

  defp plural(1, word), do: word
  defp plural(_, word), do: word <> "s"

  defp print_json(data), do: IO.puts(SykliK8s.JSON.encode!(data, pretty: true))

  defp out(text) do
    IO.write(text)
    0
  end

  defp usage_error(message) do
    IO.puts(:stderr, "sykli: #{message}\n\n" <> @usage)
    2
  end
end
