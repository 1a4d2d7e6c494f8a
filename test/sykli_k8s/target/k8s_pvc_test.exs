defmodule SykliK8s.TargetPvcTest do
  # The PVC strategy end to end: bin/sykli uploads the working tree into a claim (a hostPath
  # PersistentVolume the real binder binds) of the real control plane over pods/exec, and
  # the Jobs find it at their mount paths. The sync helper image is the host build of
  # sykli-sync (the nodes' --image-file). Each test has its own namespace.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  import SykliK8s.Test.Pipeline, only: [task: 2, task: 3, event!: 2, logged?: 2]
  alias SykliK8s.Test.{Pipeline, RealCluster}

  @sykli Path.expand("../../../bin/sykli", __DIR__)
  @moduletag timeout: 300_000
  @image RealCluster.sync_image()

  setup do
    tmp = tmp_dir!()
    ns = RealCluster.namespace!("pvc")
    work = init!(Path.join(tmp, "work"))
    write!(work, ".gitignore", "target/\n")
    write!(work, "src/main.rs", "fn main() {}\n")
    write!(work, "src/old.rs", "// deleted later\n")
    write!(work, "README.md", "readme\n")

    write!(work, ".sykli/config.exs", """
    import Config
    config :sykli, :k8s, namespace: "#{ns}", source_strategy: :pvc, source_pvc: "src",
      sync_image: "#{@image}", sync_back: true
    """)

    commit_all!(work, "first")

    # Two nodes: a ReadWriteOnce claim attaches to one, and the Jobs must follow it.
    info = RealCluster.info()
    RealCluster.create_namespace!(info, ns)
    {:ok, tmp: tmp, work: work, info: info, ns: ns}
  end

  # Returns the claim's host directory.
  defp claim!(ctx, name, mode), do: RealCluster.claim!(ctx.info, ctx.ns, name, mode)

  defp sykli(ctx, args) do
    System.cmd(@sykli, args ++ ["--kubeconfig", ctx.info["kubeconfig"]],
      cd: ctx.work,
      env: [{"SYKLI_CWD", nil}, {"SYKLI_K8S_NAMESPACE", nil}],
      stderr_to_stdout: true
    )
  end

  defp uploaded(out), do: event!(out, "source_uploaded")

  test "the dirty tree arrives exactly; a re-sync sends one file; an identical tree sends nothing", ctx do
    claim!(ctx, "src", "ReadWriteMany")
    write!(ctx.work, "src/main.rs", "fn main() { dirty() }\n")
    File.rm!(Path.join(ctx.work, "src/old.rs"))
    write!(ctx.work, "src/new.rs", "// staged\n")
    git!(ctx.work, ["add", "src/new.rs"])
    write!(ctx.work, "notes/todo.txt", "untracked\n")
    write!(ctx.work, "target/debug/app", "ignored\n")
    File.ln_s!("../README.md", Path.join(ctx.work, "src/readme"))

    check =
      ~s|grep -q dirty src/main.rs && test ! -e src/old.rs && test "$(cat src/new.rs)" = "// staged" | <>
        ~s|&& test "$(cat notes/todo.txt)" = untracked && test ! -e target && test "$(readlink src/readme)" = ../README.md | <>
        ~s|&& test "$(cat src/readme)" = readme && echo tree-ok|

    file = Pipeline.file!(ctx.tmp, [task("check", check)])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    first = uploaded(out)
    assert first["existed"] == false and first["files_sent"] == first["files"]
    assert logged?(out, "tree-ok")

    # One edit: only that file crosses the wire.
    write!(ctx.work, "notes/todo.txt", "untracked\nmore\n")
    file2 = Pipeline.file!(ctx.tmp, [task("check", ~s|grep -q more notes/todo.txt && echo edit-ok|)])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file2}))
    second = uploaded(out)
    assert second["files_sent"] == 1 and second["files_deleted"] == 0
    assert second["bytes_sent"] * 10 < first["bytes_sent"] or second["bytes_sent"] < 2048

    # Nothing changed: nothing sent.
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file2}))
    third = uploaded(out)
    assert third["existed"] == true and third["bytes_sent"] == 0

    # Back to the first tree, which the claim has (not the one uploaded last): nothing sent
    # either (the apply started beside the status exec gets an empty input and ends).
    write!(ctx.work, "notes/todo.txt", "untracked\n")
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    back = uploaded(out)
    assert back["tree"] == first["tree"]
    assert back["existed"] == true and back["bytes_sent"] == 0
    assert logged?(out, "tree-ok")
    assert RealCluster.jobs(ctx.info, ctx.ns) == []
  end

  test "each Job has its own copy, on the node of a ReadWriteOnce claim; a declared output comes back", ctx do
    # No artifact claim: `sykli run` passes no artifacts between tasks, so outputs need none.
    claim!(ctx, "src", "ReadWriteOnce")

    file =
      Pipeline.file!(ctx.tmp, [
        task("a", "echo a > mine-a && test ! -e mine-b && echo a-alone"),
        task("b", "echo b > mine-b && test ! -e mine-a && echo b-alone"),
        task("dist", "mkdir -p dist && echo built > dist/app.txt", %{
          outputs: ["dist/app.txt"],
          depends_on: ["a", "b"]
        })
      ])

    {out, 0} = sykli(ctx, ~w(run --target=k8s --jobs 2 --pipeline #{file}))
    assert out =~ "[a] a-alone" and out =~ "[b] b-alone"
    assert File.read!(Path.join(ctx.work, "dist/app.txt")) == "built\n"

    # A later run sees neither task's writes.
    file2 = Pipeline.file!(ctx.tmp, [task("later", "test ! -e mine-a && test ! -e mine-b && echo clean")])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --pipeline #{file2}))
    assert out =~ "[later] clean"
  end

  test "a missing claim, a wrong access mode, an escaping symlink: clear errors, no Job", ctx do
    file = Pipeline.file!(ctx.tmp, [task("t", "true")])
    {out, 1} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}))
    assert out =~ "PersistentVolumeClaim #{ctx.ns}/src does not exist (source_pvc)"

    claim!(ctx, "src", "ReadOnlyMany")
    {out, 1} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}))
    assert out =~ "has access modes [ReadOnlyMany]: ReadOnlyMany cannot be written to"

    File.ln_s!("/etc/passwd", Path.join(ctx.work, "passwd"))
    {out, 1} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}))
    assert out =~ "the symlink passwd points outside the repository (/etc/passwd)"
    assert RealCluster.jobs(ctx.info, ctx.ns) == []
  end

  defp use_claim!(ctx, claim) do
    config = Path.join(ctx.work, ".sykli/config.exs")

    File.write!(
      config,
      String.replace(File.read!(config), ~r/source_pvc: "[a-z]+"/, ~s|source_pvc: "#{claim}"|)
    )
  end

  # The documented name: the claim's slug and the first 10 hex digits of its SHA-256.
  defp receiver_name(claim),
    do:
      "sykli-sync-#{claim}-" <> String.slice(Base.encode16(:crypto.hash(:sha256, claim), case: :lower), 0, 10)

  test "a pod planted under the receiver's name is never sent the tree; sykli's own of another image is replaced",
       ctx do
    claim!(ctx, "src", "ReadWriteMany")
    file = Pipeline.file!(ctx.tmp, [task("t", "test -f src/main.rs && echo has-source")])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}))
    assert out =~ "[t] has-source"
    ours = RealCluster.api_get!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/pods/#{receiver_name("src")}")
    assert ours["spec"]["containers"] |> hd() |> Map.get("command") == ["/usr/local/bin/sykli-sync", "idle"]

    # What someone who may create pods in the namespace plants, for a claim sykli has not
    # used yet: sykli's own receiver spec, changed in one place.
    plant = fn claim, change ->
      spec =
        ours["spec"]
        |> Map.delete("nodeName")
        |> put_in(["volumes", Access.at(0), "persistentVolumeClaim", "claimName"], claim)
        |> change.()

      RealCluster.api_post!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/pods", %{
        metadata: %{name: receiver_name(claim), labels: ours["metadata"]["labels"]},
        spec: spec
      })
    end

    c0 = fn s -> hd(s["containers"]) end
    put_c0 = fn s, c -> Map.put(s, "containers", [c]) end

    for {claim, field, change} <- [
          {"env", "spec.containers[0].env",
           &put_c0.(&1, Map.put(c0.(&1), "env", [%{name: "PATH", value: "/tmp"}]))},
          {"path", "spec.containers[0].command[0]",
           &put_c0.(&1, Map.put(c0.(&1), "command", ["sykli-sync", "idle"]))},
          {"init", "spec.initContainers", &Map.put(&1, "initContainers", [Map.put(c0.(&1), "name", "first")])}
        ] do
      claim!(ctx, claim, "ReadWriteMany")
      planted = plant.(claim, change)

      use_claim!(ctx, claim)

      {out, 1} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}))

      assert out =~
               "pod #{ctx.ns}/#{receiver_name(claim)} is not the receiver sykli creates for claim #{claim}: its #{field} differs",
             out

      assert out =~ "kubectl delete pod -n #{ctx.ns} #{receiver_name(claim)}"
      assert RealCluster.jobs(ctx.info, ctx.ns) == []
      still = RealCluster.api_get!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/pods/#{receiver_name(claim)}")
      assert still["metadata"]["uid"] == planted["metadata"]["uid"]
    end

    # sykli's own receiver of an older sync image (which never started): replaced.
    claim!(ctx, "older", "ReadWriteMany")
    old = plant.("older", &put_c0.(&1, Map.put(c0.(&1), "image", "ghcr.io/sykli/sync:0.0.1")))

    use_claim!(ctx, "older")

    {out, 0} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}))
    assert out =~ "[t] has-source"
    new = RealCluster.api_get!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/pods/#{receiver_name("older")}")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert hd(new["spec"]["containers"])["image"] == @image
  end

  test "source_mount :shared mounts the published tree in place, checked first: a file changed on the claim fails the task",
       ctx do
    claim = claim!(ctx, "src", "ReadWriteMany")

    write!(ctx.work, ".sykli/config.exs", """
    import Config
    config :sykli, :k8s, namespace: "#{ctx.ns}", source_strategy: :pvc, source_pvc: "src",
      sync_image: "#{@image}", source_mount: :shared
    """)

    file = Pipeline.file!(ctx.tmp, [task("t", ~s|grep -q "fn main" src/main.rs && echo shared-ok|)])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    assert logged?(out, "shared-ok"), out
    tree = uploaded(out)["tree"]

    # Anything else that mounts the claim writes into the published tree.
    published = Path.join([claim, "sykli", "trees", tree])
    File.write!(Path.join(published, "src/main.rs"), "fn main() { evil() }\n")

    {out, 1} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    assert uploaded(out)["existed"] == true
    refute logged?(out, "shared-ok")
    assert out =~ "src/main.rs: it differs from the published tree: the tree was modified on the claim", out
  end

  test "source_sync :git: an unpushed commit (no remote at all), as committed, with its history", ctx do
    claim!(ctx, "src", "ReadWriteMany")

    write!(ctx.work, ".sykli/config.exs", """
    import Config
    config :sykli, :k8s, namespace: "#{ctx.ns}", source_strategy: :pvc, source_pvc: "src",
      sync_image: "#{@image}", source_sync: :git
    """)

    write!(ctx.work, "src/main.rs", "fn main() { committed() }\n")
    sha = commit_all!(ctx.work, "local only")
    write!(ctx.work, "src/main.rs", "fn main() { not_committed() }\n")

    check =
      ~s|test "$(git rev-parse HEAD)" = #{sha} && grep -q committed src/main.rs && ! grep -q not_committed src/main.rs | <>
        ~s|&& test "$(git rev-list --count HEAD)" = 2 && echo bundle-ok|

    file = Pipeline.file!(ctx.tmp, [task("check", check)])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    assert logged?(out, "bundle-ok"), out
    assert out =~ "1 uncommitted change not included"

    # The same HEAD again: the bundle's tree is already on the claim.
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    assert uploaded(out)["existed"] == true
  end

  test "source_sync :git with an output of \".\": the task's files come back, the laptop's .git is never touched",
       ctx do
    claim!(ctx, "src", "ReadWriteMany")

    write!(ctx.work, ".sykli/config.exs", """
    import Config
    config :sykli, :k8s, namespace: "#{ctx.ns}", source_strategy: :pvc, source_pvc: "src",
      sync_image: "#{@image}", source_sync: :git, sync_back: true
    """)

    sha = commit_all!(ctx.work, "bundle me")
    git_dir = Path.join(ctx.work, ".git")
    before = for f <- ~w(config HEAD index), into: %{}, do: {f, File.read!(Path.join(git_dir, f))}

    # The pod's clone is a git repository of its own: a commit there changes its .git
    # (HEAD, index, objects), and a config entry that would run on the laptop.
    work =
      ~s|echo built > built.txt && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m pod | <>
        ~s|&& git config core.fsmonitor "touch /tmp/pwned" && echo pod-done|

    file = Pipeline.file!(ctx.tmp, [task("all", work, %{outputs: ["."]})])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}))
    assert out =~ "[all] pod-done", out
    assert File.read!(Path.join(ctx.work, "built.txt")) == "built\n"

    after_run = for f <- ~w(config HEAD index), into: %{}, do: {f, File.read!(Path.join(git_dir, f))}
    assert after_run == before
    assert git!(ctx.work, ["rev-parse", "HEAD"]) |> String.trim() == sha
  end
end
