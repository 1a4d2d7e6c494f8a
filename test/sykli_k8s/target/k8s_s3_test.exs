defmodule SykliK8s.TargetS3Test do
  # The S3 strategy end to end: bin/sykli packs the working tree, uploads it to a real
  # S3-compatible server on 127.0.0.1 that verifies SigV4 (s3s-fs), and the Jobs of the
  # strict test cluster fetch it through a presigned URL with the host build of sykli-sync.
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  import SykliK8s.Test.Pipeline, only: [task: 2, event!: 2, logged?: 2]
  alias SykliK8s.Test.{Cluster, Pipeline, S3Server}

  @sykli Path.expand("../../../bin/sykli", __DIR__)
  @moduletag timeout: 300_000
  @image "ghcr.io/sykli/sync:test"
  @bucket "builds"

  setup do
    tmp = tmp_dir!()
    s3 = S3Server.start!(Path.join(tmp, "s3"), [@bucket])
    work = init!(Path.join(tmp, "work"))
    write!(work, ".gitignore", "target/\n")
    write!(work, "src/main.rs", "fn main() {}\n")
    write!(work, "src/old.rs", "// deleted later\n")
    write!(work, "README.md", "readme\n")

    write!(work, ".sykli/config.exs", """
    import Config
    config :sykli, :k8s, namespace: "ci", source_strategy: :s3, sync_image: "#{@image}",
      s3: [bucket: "#{@bucket}", prefix: "ci", endpoint: "#{s3["endpoint"]}", region: "#{s3["region"]}"]
    """)

    commit_all!(work, "first")
    info = Cluster.start!(Path.join(tmp, "cluster"), Cluster.sync_image_file(@image))

    Cluster.api_post!(info, "/api/v1/namespaces", %{metadata: %{name: "ci"}})
    {:ok, tmp: tmp, work: work, info: info, s3: s3}
  end

  # Credentials only through the AWS chain's environment; HOME has no ~/.aws.
  defp sykli(ctx, args, secret \\ nil) do
    System.cmd(@sykli, args ++ ["--kubeconfig", ctx.info["kubeconfig"]],
      cd: ctx.work,
      env: [
        {"SYKLI_CWD", nil},
        {"SYKLI_K8S_NAMESPACE", nil},
        {"HOME", ctx.tmp},
        {"AWS_PROFILE", nil},
        {"AWS_SESSION_TOKEN", nil},
        {"AWS_ACCESS_KEY_ID", ctx.s3["access_key"]},
        {"AWS_SECRET_ACCESS_KEY", secret || ctx.s3["secret_key"]}
      ],
      stderr_to_stdout: true
    )
  end

  defp published(out), do: event!(out, "source_published")

  defp object_file(ctx, key), do: S3Server.object_path(ctx.s3, @bucket, key)

  test "the dirty tree arrives exactly; an unchanged tree uploads nothing", ctx do
    write!(ctx.work, "src/main.rs", "fn main() { dirty() }\n")
    File.rm!(Path.join(ctx.work, "src/old.rs"))
    write!(ctx.work, "notes/todo.txt", "untracked\n")
    write!(ctx.work, "target/debug/app", "ignored\n")
    File.ln_s!("../README.md", Path.join(ctx.work, "src/readme"))

    check =
      ~s|grep -q dirty src/main.rs && test ! -e src/old.rs && test "$(cat notes/todo.txt)" = untracked | <>
        ~s|&& test ! -e target && test "$(readlink src/readme)" = ../README.md && test ! -e .git && echo tree-ok|

    file = Pipeline.file!(ctx.tmp, [task("check", check)])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    first = published(out)
    assert first["existed"] == false and first["uploaded_bytes"] == first["size"] and first["size"] > 0
    assert first["key"] == "ci/sykli-source/#{first["tree"]}.tar.gz"
    assert File.exists?(object_file(ctx, first["key"]))
    assert logged?(out, "tree-ok"), out

    # Nothing changed: the bucket has it, nothing is sent.
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    again = published(out)
    assert again["existed"] == true and again["uploaded_bytes"] == 0
    assert again["tree"] == first["tree"] and again["sha256"] == first["sha256"]
    assert Cluster.jobs(ctx.info, "ci") == []
  end

  test "source_sync: :git ships HEAD as a bundle: an unpushed commit is checked out, history included", ctx do
    config = Path.join(ctx.work, ".sykli/config.exs")

    File.write!(
      config,
      String.replace(File.read!(config), "source_strategy: :s3,", "source_strategy: :s3, source_sync: :git,")
    )

    write!(ctx.work, "src/second.rs", "// committed, never pushed\n")
    commit_all!(ctx.work, "second")
    sha = head!(ctx.work)
    write!(ctx.work, "src/second.rs", "// a local change the bundle leaves out\n")

    check =
      ~s|test "$(git rev-parse HEAD)" = #{sha} && test "$(cat src/second.rs)" = "// committed, never pushed" | <>
        ~s|&& test "$(git log --format=%s -1 HEAD~1)" = first && echo bundle-ok|

    file = Pipeline.file!(ctx.tmp, [task("check", check)])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    assert published(out)["uploaded_bytes"] > 0
    assert logged?(out, "bundle-ok"), out
  end

  test "the Job holds a presigned URL and no credentials", ctx do
    file = Pipeline.file!(ctx.tmp, [task("fail", "exit 3")])
    {out, 1} = sykli(ctx, ~w(run --target=k8s --keep-failed --pipeline #{file}))
    assert out =~ "exit code 3" or out =~ "exited with 3", out
    [name] = Cluster.jobs(ctx.info, "ci")
    text = SykliK8s.JSON.encode!(Cluster.api_get!(ctx.info, "/apis/batch/v1/namespaces/ci/jobs/#{name}"))
    refute text =~ ctx.s3["secret_key"]
    refute text =~ "AWS_SECRET_ACCESS_KEY"
    assert text =~ "X-Amz-Signature="
    assert text =~ "X-Amz-Expires="

    # A dry run packs (same checksum) but signs nothing and calls nothing.
    {out, 0} = sykli(ctx, ~w(run --target=k8s --dry-run -o json --pipeline #{file}), "not-even-read")
    refute out =~ "X-Amz-Signature"
    refute out =~ ctx.s3["secret_key"]
    assert out =~ "sykli.io/source-sha256"
  end

  test "a corrupted object fails the task's verification, naming the object", ctx do
    file = Pipeline.file!(ctx.tmp, [task("check", "echo should-not-run")])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    p = published(out)
    path = object_file(ctx, p["key"])
    size = File.stat!(path).size
    File.write!(path, :binary.copy("x", size))

    {out, 1} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    assert published(out)["existed"] == true
    refute logged?(out, "should-not-run")
    assert out =~ "verification failed", out
    assert out =~ p["key"]
    refute out =~ "X-Amz-Signature", "the URL is a capability: never in a message"
  end

  test "wrong credentials fail before any Job is created", ctx do
    file = Pipeline.file!(ctx.tmp, [task("check", "true")])
    {out, 1} = sykli(ctx, ~w(run --target=k8s --keep-failed --pipeline #{file}), "wrong-secret")
    assert out =~ "SignatureDoesNotMatch" or out =~ "InvalidAccessKeyId", out
    assert out =~ "credentials from environment"
    refute out =~ "wrong-secret"
    assert Cluster.jobs(ctx.info, "ci") == []
  end

  test "info --check lists the bucket with the run's credentials, and names a refusal", ctx do
    {out, 0} = sykli(ctx, ~w(info --check))

    assert out =~
             "s3://builds/ci/sykli-source/ (#{ctx.s3["region"]}): listable with credentials from environment",
           out

    {out, 1} = sykli(ctx, ~w(info --check), "wrong-secret")
    assert out =~ "✗ GET s3://builds/", out
    assert out =~ "SignatureDoesNotMatch"
    refute out =~ "wrong-secret"
  end

  test "a missing bucket is named with the settings to fix", ctx do
    File.write!(
      Path.join(ctx.work, ".sykli/config.exs"),
      File.read!(Path.join(ctx.work, ".sykli/config.exs"))
      |> String.replace(~s(bucket: "builds"), ~s(bucket: "nope"))
    )

    file = Pipeline.file!(ctx.tmp, [task("check", "true")])
    {out, 1} = sykli(ctx, ~w(run --target=k8s --keep-failed --pipeline #{file}))
    assert out =~ ~s(bucket "nope" does not exist), out
    assert Cluster.jobs(ctx.info, "ci") == []
  end
end
