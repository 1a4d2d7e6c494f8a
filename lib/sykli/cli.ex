defmodule Sykli.CLI do
  @moduledoc """
  The `sykli` command line. `bin/sykli` runs it with the user's working directory as the
  repository; `mix sykli …` runs the same code.
  """

  @usage """
  usage: sykli <command> [options]

  commands:
    info            show the git context a Kubernetes run would use
    run             run a pipeline (--target=k8s --dry-run prints the Jobs)
    help            show this help

  options for info:
    -C, --dir DIR   the repository (default: the current directory)
    --json          print JSON instead of text
    --max-paths N   how many changed paths to list (default 10)

  options for run:
    --target k8s        run on Kubernetes (the only target here)
    --dry-run           print the Jobs that would be submitted, submit nothing
    --pipeline FILE     the pipeline JSON the sykli SDKs emit, or - for stdin
                        (default: .sykli/pipeline.json in the repository)
    -o, --output FMT    yaml (default; multi-document) or json (a v1 List)
    --allow-dirty       build HEAD as committed despite uncommitted changes
    -n, --namespace NS  the namespace (default: SYKLI_K8S_NAMESPACE, else sykli)
    -C, --dir DIR       the repository (default: the current directory)
    --run-id ID         the run id in Job names and labels (default: random)
  """

  @doc "Runs the command line and halts the VM with its exit status."
  @spec main([String.t()]) :: no_return()
  def main(argv \\ System.argv()) do
    System.halt(run(argv))
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
    switches = [json: :boolean, dir: :string, max_paths: :integer, help: :boolean]

    case OptionParser.parse(argv, strict: switches, aliases: [C: :dir, h: :help]) do
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

    with {:ok, ctx} <- Sykli.GitContext.detect(dir, max_paths: opts[:max_paths] || 10),
         {:ok, settings} <- Sykli.Config.effective(ctx.root) do
      if opts[:json],
        do: print_json(Map.put(info_map(ctx), :k8s, settings_map(settings))),
        else: IO.write(render_info(ctx) <> render_settings(settings))

      Enum.each(ctx.warnings, &IO.puts(:stderr, "warning: " <> &1))
      0
    else
      {:error, %Sykli.Error{message: message}} ->
        IO.puts(:stderr, "sykli: " <> message)
        1
    end
  end

  defp run_cmd(argv) do
    switches = [
      target: :string,
      dry_run: :boolean,
      pipeline: :string,
      output: :string,
      allow_dirty: :boolean,
      namespace: :string,
      dir: :string,
      run_id: :string,
      help: :boolean
    ]

    case OptionParser.parse(argv, strict: switches, aliases: [o: :output, n: :namespace, C: :dir, h: :help]) do
      {opts, [], []} -> if opts[:help], do: out(@usage), else: do_run(opts)
      {_, [extra | _], _} -> usage_error("run takes no argument #{inspect(extra)}")
      {_, _, [{flag, _} | _]} -> usage_error("run does not understand #{flag}")
    end
  end

  defp do_run(opts) do
    format = opts[:output] || "yaml"

    cond do
      opts[:target] != "k8s" ->
        usage_error("run needs --target=k8s (the Kubernetes target is the one this build has)")

      format not in ["yaml", "json"] ->
        usage_error("--output must be yaml or json, not #{inspect(format)}")

      !opts[:dry_run] ->
        usage_error(
          "submitting Jobs to a cluster is not part of this build yet: use --dry-run to print them " <>
            "(and kubectl apply -f - to submit them yourself)"
        )

      true ->
        dry_run(opts, String.to_atom(format))
    end
  end

  defp dry_run(opts, format) do
    dir = opts[:dir] || System.get_env("SYKLI_CWD") || File.cwd!()

    with {:ok, ctx} <- Sykli.GitContext.detect(dir),
         {:ok, pipeline} <- read_pipeline(opts[:pipeline], ctx.root),
         {:ok, state} <- Sykli.Target.K8s.setup(k8s_state(opts, ctx)),
         {:ok, text} <-
           Sykli.Target.K8s.render_pipeline(pipeline, state, format,
             run_id: opts[:run_id] || Sykli.Target.K8s.run_id(),
             allow_dirty: opts[:allow_dirty] || false
           ) do
      Enum.each(ctx.warnings, &IO.puts(:stderr, "warning: " <> &1))

      if ctx.dirty do
        IO.puts(
          :stderr,
          "warning: building HEAD #{ctx.sha}: #{Sykli.Target.K8s.dirty_summary(ctx)} are not included"
        )
      end

      if ctx.pushed == false do
        IO.puts(
          :stderr,
          "warning: HEAD #{ctx.sha} is on no remote-tracking branch: a cluster cannot fetch it until you push it"
        )
      end

      IO.write(text)
      0
    else
      {:error, %Sykli.Error{message: message}} ->
        IO.puts(:stderr, "sykli: " <> message)
        1
    end
  end

  defp k8s_state(opts, ctx) do
    [git_context: ctx, workdir: ctx.root, dry_run: true] ++
      if(opts[:namespace], do: [namespace: opts[:namespace]], else: [])
  end

  defp read_pipeline("-", _root), do: {:ok, IO.read(:stdio, :eof) |> to_string()}

  defp read_pipeline(path, root) do
    path = path || Path.join([root, ".sykli", "pipeline.json"])

    case File.read(path) do
      {:ok, text} ->
        {:ok, text}

      {:error, reason} ->
        {:error,
         %Sykli.Error{
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

  defp print_json(data), do: IO.puts(Sykli.JSON.encode!(data, pretty: true))

  defp out(text) do
    IO.write(text)
    0
  end

  defp usage_error(message) do
    IO.puts(:stderr, "sykli: #{message}\n\n" <> @usage)
    2
  end
end
