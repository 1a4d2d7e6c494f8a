defmodule SykliK8s.TargetSyncBackHostileTest do
  # The sync back end to end against a HOSTILE receiver. The claim's receiver pod runs
  # sykli-hostile-sync (the test kit's stand-in for the sync image, mapped over the image by
  # the real control plane's nodes, --image-file): asked by the laptop to `pack` a task's outputs, it
  # answers with an archive of the malicious corpus (sykli_testkit::hostile_archives, the one
  # the extractor's own tests use), the output's name choosing the case. The product's real
  # path — Target.finish_task, the NIF, cluster::sync::sync_back, the hardened extractor — runs
  # unchanged; each archive must be refused with an error naming the rule and the entry, and
  # nothing may be written outside the working tree.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  alias SykliK8s.Target
  alias SykliK8s.Test.{Cluster, RealCluster}

  @moduletag timeout: 300_000
  @image RealCluster.hostile_image()
  # What every corpus archive holds around its malicious entries (hostile_archives.rs).
  @written_before "before.txt"
  @before_text "written before the refusal\n"
  @never_written "after.txt"

  setup do
    tmp = tmp_dir!()
    hostile = Path.join([Cluster.target_dir(), "debug", "sykli-hostile-sync"])
    assert File.exists?(hostile), "#{hostile} is missing: cargo build -p sykli_testkit --bins"
    # The hostile receiver learns where the sentinel of the current case is from this file
    # (another file of its image, the plane's one for the run): the absolute-path cases aim
    # there.
    info = RealCluster.info()
    sentinel_conf = info["hostile_sentinel"]
    ns = RealCluster.namespace!("hostile")
    RealCluster.create_namespace!(info, ns)
    RealCluster.claim!(info, ns, "src")

    {:ok, tmp: tmp, info: info, hostile: hostile, sentinel_conf: sentinel_conf, ns: ns}
  end

  # A fresh box per case: `box/work` (a git repository: the working tree the outputs come
  # back into) and `box/sentinel/keep`, where the corpus's escapes aim.
  defp box!(ctx, name) do
    box = Path.join(ctx.tmp, "box-" <> name)
    work = init!(Path.join(box, "work"))
    write!(work, "README.md", "readme\n")
    commit_all!(work, "first")
    sentinel = Path.join(box, "sentinel")
    File.mkdir_p!(sentinel)
    File.write!(Path.join(sentinel, "keep"), "untouched")
    File.write!(ctx.sentinel_conf, sentinel)
    %{box: box, work: work, sentinel: sentinel}
  end

  defp state!(ctx, work, cluster) do
    {:ok, git} = SykliK8s.Git.detect(work, env: %{})

    {:ok, state} =
      Target.setup(
        kubeconfig: ctx.info["kubeconfig"],
        git_context: git,
        workdir: work,
        cluster: cluster,
        namespace: ctx.ns,
        source_strategy: :pvc,
        source_pvc: "src",
        sync_image: @image,
        sync_back: true
      )

    state
  end

  # The product's sync back of a succeeded task declaring `outputs`, from another process:
  # its answer is awaited with an explicit timeout.
  defp finish(state, outputs, job) do
    parent = self()
    namespace = state.namespace
    ref = make_ref()

    spawn_link(fn ->
      send(
        parent,
        {ref, Target.finish_task(state, %{"name" => "t", "outputs" => outputs}, job, namespace, true)}
      )
    end)

    assert_receive {^ref, result}, 120_000
    result
  end

  defp corpus(ctx, sentinel) do
    {out, 0} = System.cmd(ctx.hostile, ["corpus", "--sentinel", sentinel])
    out |> String.split("\n", trim: true) |> Enum.map(&SykliK8s.JSON.decode!/1)
  end

  # Every path below `dir` with its type, symlinks not followed.
  defp tree(dir) do
    Path.wildcard(Path.join(dir, "**"), match_dot: true)
    |> Enum.reject(&String.contains?(&1, "/.git/"))
    |> Enum.map(fn p -> {Path.relative_to(p, dir), File.lstat!(p).type} end)
    |> Enum.sort()
  end

  defp assert_nothing_outside(b, name, planted \\ nil) do
    assert File.ls!(b.box) |> Enum.sort() == ["sentinel", "work"], "#{name}: written next to the working tree"
    assert File.ls!(b.sentinel) == ["keep"], "#{name}: the sentinel directory changed"
    assert File.lstat!(Path.join(b.sentinel, "keep")).type == :regular, name
    assert File.read!(Path.join(b.sentinel, "keep")) == "untouched", name

    for {path, type} <- tree(b.box) do
      assert type in [:regular, :directory, :symlink], "#{name}: #{path} is a #{type}"

      if type == :symlink do
        # What the case planted, else only what the extractor accepted: pointing inside.
        full = Path.join(b.box, path)
        target = File.read_link!(full)
        resolved = Path.expand(target, Path.dirname(full))
        assert String.starts_with?(path, "work/"), "#{name}: symlink #{path}"

        assert String.starts_with?(resolved, b.work <> "/") or resolved == b.work or
                 (path == "work/#{planted}" and target == b.sentinel),
               "#{name}: #{path} -> #{target}"
      end
    end
  end

  test "every malicious archive from a hostile receiver is refused by name, and nothing lands outside the working tree",
       ctx do
    cases = corpus(ctx, Path.join(ctx.tmp, "probe"))
    assert length(cases) >= 20
    first = box!(ctx, "benign")
    state = state!(ctx, first.work, nil)
    cluster = state.cluster

    # The stand-in answers what a real receiver would for well-formed outputs: they land.
    assert {:ok, %{files: 2, bytes: bytes}} = finish(state, ["benign", "out"], "hostile-benign")
    assert bytes > 0
    assert File.read!(Path.join(first.work, "out/report.txt")) == "all good\n"
    assert File.read_link!(Path.join(first.work, "out/latest")) == "report.txt"
    assert Bitwise.band(File.stat!(Path.join(first.work, "out/bin/tool")).mode, 0o777) == 0o755
    assert_nothing_outside(first, "benign")

    for {c, i} <- Enum.with_index(cases) do
      name = c["name"]
      b = box!(ctx, name)
      # The corpus, rebuilt for this box's sentinel (the absolute cases name it).
      c = Enum.find(corpus(ctx, b.sentinel), &(&1["name"] == name))

      if planted = c["planted_symlink"] do
        File.ln_s!(b.sentinel, Path.join(b.work, planted))
      end

      state = state!(ctx, b.work, cluster)
      # The case is the first output; "." declares everything (but .git), so what is
      # refused here is the extractor's to refuse, by its rule.
      assert {:error, %SykliK8s.Error{message: message}} = finish(state, [name, "."], "hostile-#{i}")
      assert message =~ "the outputs of hostile-#{i}", "#{name}: #{message}"
      assert message =~ "(rule #{c["rule"]})", "#{name}: #{message}"
      assert String.contains?(message, c["entry"]), "#{name}: #{message} (expected #{inspect(c["entry"])})"

      assert_nothing_outside(b, name, c["planted_symlink"])
      # As the extractor documents: entries before the refusal stay written, none after it.
      assert File.read!(Path.join(b.work, @written_before)) == @before_text, name
      refute File.exists?(Path.join(b.work, @never_written)), name
      File.rm_rf!(b.box)
    end
  end

  test "a receiver's archive that writes .git (any spelling) or what the task did not declare is refused whole: nothing is written",
       ctx do
    state = state!(ctx, box!(ctx, "first").work, nil)
    cluster = state.cluster

    for {name, outputs, entry} <- [
          {"dotgit-config", ["dotgit-config", "."], ".git/config"},
          {"dotgit-hook", ["dotgit-hook", "."], ".git/hooks/post-checkout"},
          {"dotgit-case", ["dotgit-case", "."], ".GIT/config"},
          {"dotgit-short-name", ["dotgit-short-name", "."], "git~1/config"},
          {"dotgit-link", ["dotgit-link", "."], "cfg"},
          {"undeclared", ["undeclared"], "src/main.rs"}
        ] do
      b = box!(ctx, name)
      git_config = File.read!(Path.join(b.work, ".git/config"))
      before = tree(b.work)
      state = state!(ctx, b.work, cluster)

      assert {:error, %SykliK8s.Error{kind: :sync_failed, message: message}} =
               finish(state, outputs, "repo-#{name}")

      assert message =~ "the outputs of repo-#{name}: refused #{inspect(entry)}", "#{name}: #{message}"
      assert message =~ "nothing was written", name
      assert tree(b.work) == before, "#{name}: the working tree changed"
      assert File.read!(Path.join(b.work, ".git/config")) == git_config, name

      hooks = with {:error, _} <- File.ls(Path.join(b.work, ".git/hooks")), do: {:ok, []}
      assert {:ok, names} = hooks
      assert Enum.reject(names, &String.ends_with?(&1, ".sample")) == [], name

      refute File.exists?(Path.join(b.work, "ok.txt")), name
      File.rm_rf!(b.box)
    end
  end
end
