defmodule SykliK8s.TargetS3Test do
  # The S3 strategy end to end: bin/sykli packs the working tree, uploads it to a real
  # S3-compatible server on 127.0.0.1 that verifies SigV4 (s3s-fs), and the Jobs of the
  # real control plane (each test in its own namespace) fetch it through a presigned URL
  # with the host build of sykli-sync: each Job's own, in a Secret the Job owns (removed
  # with it by the real garbage collector).
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  import SykliK8s.Test.Pipeline, only: [task: 2, task: 3, event!: 2, logged?: 2]
  alias SykliK8s.Test.{Cluster, Pipeline, RealCluster, S3Server}

  @sykli Path.expand("../../../bin/sykli", __DIR__)
  @moduletag timeout: 300_000
  @image RealCluster.sync_image()
  @bucket "builds"

  setup do
    tmp = tmp_dir!()
    ns = RealCluster.namespace!("s3")
    s3 = S3Server.start!(Path.join(tmp, "s3"), [@bucket])
    work = init!(Path.join(tmp, "work"))
    write!(work, ".gitignore", "target/\n")
    write!(work, "src/main.rs", "fn main() {}\n")
    write!(work, "src/old.rs", "// deleted later\n")
    write!(work, "README.md", "readme\n")

    write!(work, ".sykli/config.exs", """
    import Config
    config :sykli, :k8s, namespace: "#{ns}", source_strategy: :s3, sync_image: "#{@image}",
      s3: [bucket: "#{@bucket}", prefix: "ci", endpoint: "#{s3["endpoint"]}", region: "#{s3["region"]}"]
    """)

    commit_all!(work, "first")
    info = RealCluster.info()
    RealCluster.create_namespace!(info, ns)
    {:ok, tmp: tmp, work: work, info: info, s3: s3, ns: ns}
  end

  # Credentials only through the AWS chain's environment; HOME has no ~/.aws; no instance
  # metadata (nothing leaves 127.0.0.1).
  defp sykli(ctx, args, secret \\ nil, stderr_to_stdout \\ true) do
    System.cmd(@sykli, args ++ ["--kubeconfig", ctx.info["kubeconfig"]],
      cd: ctx.work,
      env: [
        {"SYKLI_CWD", nil},
        {"SYKLI_K8S_NAMESPACE", nil},
        {"HOME", ctx.tmp},
        {"AWS_PROFILE", nil},
        {"AWS_SESSION_TOKEN", nil},
        {"AWS_EC2_METADATA_DISABLED", "true"},
        {"AWS_ACCESS_KEY_ID", ctx.s3["access_key"]},
        {"AWS_SECRET_ACCESS_KEY", secret || ctx.s3["secret_key"]}
      ],
      stderr_to_stdout: stderr_to_stdout
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
    assert RealCluster.jobs(ctx.info, ctx.ns) == []
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

  defp list(ctx, path), do: RealCluster.api_get!(ctx.info, path)["items"]

  defp secret(ctx, name),
    do: Enum.find(list(ctx, "/api/v1/namespaces/#{ctx.ns}/secrets"), &(&1["metadata"]["name"] == name))

  defp job(ctx, name),
    do: Enum.find(list(ctx, "/apis/batch/v1/namespaces/#{ctx.ns}/jobs"), &(&1["metadata"]["name"] == name))

  defp pods(ctx, job),
    do:
      Enum.filter(
        list(ctx, "/api/v1/namespaces/#{ctx.ns}/pods"),
        &(&1["metadata"]["labels"]["batch.kubernetes.io/job-name"] == job)
      )

  defp url_of(secret), do: Base.decode64!(secret["data"]["url"])

  defp expires_of(url),
    do: url |> URI.parse() |> Map.fetch!(:query) |> URI.decode_query() |> Map.fetch!("X-Amz-Expires")

  # Owned by the Job as the API has it now: its uid, not the controller, not blocking.
  defp owned_by?(secret, job) do
    secret != nil and job != nil and
      secret["metadata"]["ownerReferences"] == [
        %{
          "apiVersion" => "batch/v1",
          "kind" => "Job",
          "name" => job["metadata"]["name"],
          "uid" => job["metadata"]["uid"],
          "controller" => false,
          "blockOwnerDeletion" => false
        }
      ]
  end

  test "each Job's URL is signed for its task at submission, in a Secret the Job owns", ctx do
    signal = Path.join(ctx.tmp, "signal")
    File.mkdir_p!(signal)
    File.chmod!(signal, 0o777)

    check =
      ~s|test "$(cat /app/README.md)" = readme && echo source-ok; test -z "$SYKLI_SOURCE_URL" && echo no-url; | <>
        ~s|while [ ! -e /signal/go ]; do sleep 0.1; done; echo released|

    volumes = [%{name: "signal", mount_path: "/signal", host_path: %{path: signal}}]
    file = Pipeline.file!(ctx.tmp, [task("hold", check, %{timeout: 120, k8s: %{volumes: volumes}})])
    name = SykliK8s.Target.job_name("hold", "s3own")
    run = Task.async(fn -> sykli(ctx, ~w(run --target=k8s --json --run-id s3own --pipeline #{file})) end)

    # While the task runs (it waits for the signal): the Secret is there, owned by the Job.
    assert Cluster.eventually(
             fn -> Enum.any?(pods(ctx, name), &(&1["status"]["phase"] == "Running")) end,
             60_000
           )

    assert owned_by?(secret(ctx, name <> "-source"), job(ctx, name))
    s = secret(ctx, name <> "-source")
    assert s["type"] == "Opaque" and s["immutable"] == true
    assert s["metadata"]["labels"]["sykli.io/run"] == "s3own"
    url = url_of(s)
    assert url =~ "X-Amz-Signature="
    # The task's own timeout plus the margin (scheduling and image pulls before the fetch).
    assert expires_of(url) == "#{120 + 600}"

    # Neither the Job nor its pod holds the URL: the fetch reads the Secret's key.
    text = SykliK8s.JSON.encode!(job(ctx, name)) <> SykliK8s.JSON.encode!(pods(ctx, name))
    refute text =~ "X-Amz-"
    [fetch | _] = job(ctx, name)["spec"]["template"]["spec"]["initContainers"]

    assert fetch["env"] == [
             %{
               "name" => "SYKLI_SOURCE_URL",
               "valueFrom" => %{
                 "secretKeyRef" => %{"name" => name <> "-source", "key" => "url", "optional" => false}
               }
             }
           ]

    File.write!(Path.join(signal, "go"), "")
    {out, 0} = Task.await(run, 120_000)
    assert logged?(out, "source-ok") and logged?(out, "no-url") and logged?(out, "released"), out
    refute out =~ "X-Amz-Signature"

    # The Job deleted at the end of the task, its Secret goes with it (garbage collection).
    assert RealCluster.jobs(ctx.info, ctx.ns) == []
    assert Cluster.eventually(fn -> secret(ctx, name <> "-source") == nil end)
  end

  test "a kept Job holds no URL and no credentials; its Secret stays with it", ctx do
    file = Pipeline.file!(ctx.tmp, [task("fail", "exit 3")])
    {out, 1} = sykli(ctx, ~w(run --target=k8s --keep-failed --pipeline #{file}))
    assert out =~ "exit code 3" or out =~ "exited with 3", out
    [name] = RealCluster.jobs(ctx.info, ctx.ns)

    text =
      SykliK8s.JSON.encode!(
        RealCluster.api_get!(ctx.info, "/apis/batch/v1/namespaces/#{ctx.ns}/jobs/#{name}")
      )

    refute text =~ ctx.s3["secret_key"]
    refute text =~ "AWS_SECRET_ACCESS_KEY"
    refute text =~ "X-Amz-"
    assert text =~ ~s("secretKeyRef":{"key":"url","name":"#{name}-source")

    # Kept for debugging, the Job keeps its Secret, whose URL expires on its own: a task
    # without a timeout counts as an hour, plus the margin.
    s = secret(ctx, name <> "-source")
    assert owned_by?(s, job(ctx, name))
    assert expires_of(url_of(s)) == "#{3600 + 600}"

    # A dry run packs (same checksum) but signs nothing and calls nothing.
    {out, 0} = sykli(ctx, ~w(run --target=k8s --dry-run -o json --pipeline #{file}), "not-even-read")
    refute out =~ "X-Amz-"
    refute out =~ ctx.s3["secret_key"]
    assert out =~ "sykli.io/source-sha256"
    assert out =~ "-source"
  end

  test "an object at the archive's key is trusted for its content only: a corrupted one is replaced, saying so",
       ctx do
    file = Pipeline.file!(ctx.tmp, [task("check", "test -f src/main.rs && echo ran-on-the-tree")])
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    p = published(out)
    path = object_file(ctx, p["key"])
    good = File.read!(path)
    # Same size, and its metadata still claims the archive's SHA-256: only the bytes differ.
    File.write!(path, :binary.copy("x", byte_size(good)))

    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    again = published(out)
    assert again["existed"] == false and again["uploaded_bytes"] == again["size"], out
    assert again["sha256"] == p["sha256"]
    assert out =~ "s3://#{@bucket}/#{p["key"]} was not this tree's archive", out
    assert logged?(out, "ran-on-the-tree"), out
    assert File.read!(path) == good
    refute out =~ "X-Amz-Signature", "the URL is a capability: never in a message"
  end

  test "wrong credentials fail before any Job is created", ctx do
    file = Pipeline.file!(ctx.tmp, [task("check", "true")])
    {out, 1} = sykli(ctx, ~w(run --target=k8s --keep-failed --pipeline #{file}), "wrong-secret")
    assert out =~ "SignatureDoesNotMatch" or out =~ "InvalidAccessKeyId", out
    assert out =~ "credentials from environment"
    refute out =~ "wrong-secret"
    assert RealCluster.jobs(ctx.info, ctx.ns) == []
  end

  test "info --check lists the bucket with the run's credentials, and names a refusal", ctx do
    {out, 0} = sykli(ctx, ~w(info --check))

    assert out =~
             "s3://builds/ci/sykli-source/ (#{ctx.s3["region"]}): listable with credentials from environment",
           out

    # A Job's own URL Secret is made when it is submitted: not something to find missing.
    file = Pipeline.file!(ctx.tmp, [task("check", "true")])
    {out, 0} = sykli(ctx, ~w(info --check --pipeline #{file}))
    assert out =~ "every namespace, Secret, ConfigMap and key the Jobs reference exists", out

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
    assert RealCluster.jobs(ctx.info, ctx.ns) == []
  end

  test "a bucket behind a private CA: ca_bundle is trusted by the upload and by each Job's fetch", ctx do
    s3 = S3Server.start!(Path.join(ctx.tmp, "s3-tls"), [@bucket], tls: true)
    config = Path.join(ctx.work, ".sykli/config.exs")
    File.mkdir_p!(Path.join(ctx.work, "certs"))
    File.cp!(s3["ca_file"], Path.join(ctx.work, "certs/minio-ca.pem"))
    settings = ~s(endpoint: "#{ctx.s3["endpoint"]}")
    tls = ~s(endpoint: "#{s3["tls_endpoint"]}")
    File.write!(config, String.replace(File.read!(config), settings, tls))
    ctx = %{ctx | s3: s3}
    file = Pipeline.file!(ctx.tmp, [task("check", "test -f /app/src/main.rs && echo tls-ok")])

    # The endpoint's certificate is not trusted without it: no Job is made.
    {out, 1} = sykli(ctx, ~w(run --target=k8s --pipeline #{file}))
    assert out =~ "UnknownIssuer" and out =~ "s3.ca_bundle", out
    assert RealCluster.jobs(ctx.info, ctx.ns) == []

    # A path relative to the repository.
    File.write!(config, String.replace(File.read!(config), tls, tls <> ~s(, ca_bundle: "certs/minio-ca.pem")))
    {out, 0} = sykli(ctx, ~w(run --target=k8s --json --pipeline #{file}))
    assert published(out)["uploaded_bytes"] > 0
    assert logged?(out, "tls-ok"), out

    # The fetch gets the certificates as a value of its own, by name: never through a shell.
    {out, 0} = sykli(ctx, ~w(run --target=k8s --dry-run -o json --pipeline #{file}), nil, false)
    [job] = SykliK8s.JSON.decode!(out)["items"]
    [fetch | _] = job["spec"]["template"]["spec"]["initContainers"]

    assert %{"name" => "SYKLI_SOURCE_CA", "value" => pem} =
             Enum.find(fetch["env"], &(&1["name"] == "SYKLI_SOURCE_CA"))

    assert pem == File.read!(s3["ca_file"])
    assert Enum.take(fetch["command"], -2) == ["--ca-env", "SYKLI_SOURCE_CA"]
  end

  test "the bundle and the archive are made in fresh private directories and removed; nothing planted in TMPDIR is used",
       ctx do
    config = Path.join(ctx.work, ".sykli/config.exs")

    File.write!(
      config,
      String.replace(File.read!(config), "source_strategy: :s3,", "source_strategy: :s3, source_sync: :git,")
    )

    commit_all!(ctx.work, "with the config")
    sha = head!(ctx.work)
    # What the fixed names of before trusted or followed: a planted bundle for this very
    # commit, and a link where the archive was written.
    scratch = Path.join(ctx.tmp, "scratch")
    planted = Path.join(scratch, "sykli-bundle-#{sha}")
    File.mkdir_p!(planted)
    File.write!(Path.join(planted, "sykli.bundle"), "not a bundle\n")
    elsewhere = Path.join(ctx.tmp, "elsewhere")
    File.mkdir_p!(elsewhere)
    File.ln_s!(elsewhere, Path.join(scratch, "sykli-s3"))

    file =
      Pipeline.file!(ctx.tmp, [task("check", ~s|test "$(git rev-parse HEAD)" = #{sha} && echo bundle-ok|)])

    {out, 0} =
      System.cmd(
        @sykli,
        ~w(run --target=k8s --json --pipeline #{file} --kubeconfig #{ctx.info["kubeconfig"]}),
        cd: ctx.work,
        env: [
          {"TMPDIR", scratch},
          {"SYKLI_CWD", nil},
          {"SYKLI_K8S_NAMESPACE", nil},
          {"HOME", ctx.tmp},
          {"AWS_PROFILE", nil},
          {"AWS_SESSION_TOKEN", nil},
          {"AWS_EC2_METADATA_DISABLED", "true"},
          {"AWS_ACCESS_KEY_ID", ctx.s3["access_key"]},
          {"AWS_SECRET_ACCESS_KEY", ctx.s3["secret_key"]}
        ],
        stderr_to_stdout: true
      )

    assert published(out)["uploaded_bytes"] > 0
    assert logged?(out, "bundle-ok"), out
    assert File.ls!(scratch) |> Enum.sort() == ["sykli-bundle-#{sha}", "sykli-s3"], "nothing is left behind"
    assert File.read!(Path.join(planted, "sykli.bundle")) == "not a bundle\n"
    assert File.ls!(elsewhere) == []
  end
end
