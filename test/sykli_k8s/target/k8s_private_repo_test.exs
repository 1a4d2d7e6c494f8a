defmodule SykliK8s.TargetPrivateRepoTest do
  # Private repositories end to end: bin/sykli against the real control plane (each test in
  # its own namespace), with the credentials in real Secrets and ConfigMaps of the cluster,
  # and real servers on 127.0.0.1
  # (smart HTTP that requires basic auth, sshd with key auth only).
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  alias SykliK8s.Test.{Cluster, RealCluster}

  @sykli Path.expand("../../../bin/sykli", __DIR__)
  @moduletag timeout: 300_000
  @token "glpat-s3cret-7c1d9e2b"

  setup do
    tmp = tmp_dir!()
    work = init!(Path.join(tmp, "work"))
    write!(work, "Cargo.toml", "[package]\nname = \"app\"\n")
    commit_all!(work, "first")
    srv = Path.join(tmp, "srv")
    File.mkdir_p!(srv)
    git!(srv, ["init", "-q", "--bare", "repo.git"])
    info = RealCluster.info()
    ns = RealCluster.namespace!("private")
    RealCluster.create_namespace!(info, ns)
    pipeline = Path.join(tmp, "pipeline.json")
    {:ok, tmp: tmp, work: work, srv: srv, info: info, pipeline: pipeline, ns: ns}
  end

  defp remote!(ctx, url) do
    git!(ctx.work, ["remote", "add", "origin", url])
    git!(ctx.work, ["remote", "set-url", "--push", "origin", Path.join(ctx.srv, "repo.git")])
    git!(ctx.work, ["push", "-q", "-u", "origin", "main"])
  end

  defp config!(ctx, settings) do
    File.write!(
      Path.join(ctx.tmp, "config.exs"),
      "import Config\nconfig :sykli, :k8s, namespace: \"#{ctx.ns}\", #{settings}\n"
    )

    # The config lives in the repository; committed and pushed, the tree stays clean.
    File.mkdir_p!(Path.join(ctx.work, ".sykli"))
    File.cp!(Path.join(ctx.tmp, "config.exs"), Path.join(ctx.work, ".sykli/config.exs"))
    commit_all!(ctx.work, "config")
    git!(ctx.work, ["push", "-q", "origin", "main"])
  end

  # A task that checks the commit it finds, then fails on purpose so --keep-failed keeps
  # the Job to inspect.
  defp write_pipeline!(ctx) do
    task = %{
      name: "build",
      container: "any",
      env: %{"EXPECTED" => head!(ctx.work)},
      mounts: [%{resource: "src:.", path: "/app", type: "directory"}],
      command: ~s|test -f Cargo.toml && test "$(git rev-parse HEAD)" = "$EXPECTED" && echo source-ok; exit 7|
    }

    File.write!(
      ctx.pipeline,
      SykliK8s.JSON.encode!(%{
        version: "2",
        tasks: [task],
        resources: %{"src:." => %{type: "directory", path: "."}}
      })
    )
  end

  defp sykli(ctx, args) do
    write_pipeline!(ctx)

    System.cmd(@sykli, args ++ ["--kubeconfig", ctx.info["kubeconfig"], "--pipeline", ctx.pipeline],
      cd: ctx.work,
      env: [{"SYKLI_CWD", nil}, {"SYKLI_K8S_NAMESPACE", nil}],
      stderr_to_stdout: true
    )
  end

  defp job!(ctx, name), do: RealCluster.api_get!(ctx.info, "/apis/batch/v1/namespaces/#{ctx.ns}/jobs/#{name}")

  test "an HTTPS token clones; it is in none of the manifest, the Job, the logs", ctx do
    # HTTPS: a token never travels over plain http.
    server =
      Cluster.program!("sykli-git-server", ["--root", ctx.srv, "--tls", "--basic-auth", "ci-bot:" <> @token])

    url = server["url_base"]
    assert String.starts_with?(url, "https://")

    RealCluster.api_post!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/configmaps", %{
      metadata: %{name: "corp-ca"},
      data: %{"ca.crt" => File.read!(server["ca_file"])}
    })

    remote!(ctx, url <> "/repo.git")

    config!(
      ctx,
      ~s(git_token_secret: "git-token", git_token_username_key: "username", git_ca_bundle: "corp-ca")
    )

    # The Secret lacks a key the Job reads: refused before the Job exists, naming both.
    RealCluster.api_post!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/secrets", %{
      metadata: %{name: "git-token"},
      stringData: %{"token" => @token}
    })

    {out, 1} = sykli(ctx, ~w(run --target=k8s --run-id pre1))
    assert out =~ ~s(Secret #{ctx.ns}/git-token has no key "username")
    assert RealCluster.jobs(ctx.info, ctx.ns) == []

    RealCluster.api_post!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/secrets", %{
      metadata: %{name: "git-token-2"},
      stringData: %{"token" => @token, "username" => "ci-bot"}
    })

    config!(
      ctx,
      ~s(git_token_secret: "git-token-2", git_token_username_key: "username", git_ca_bundle: "corp-ca")
    )

    {manifest, 0} = sykli(ctx, ~w(run --target=k8s --dry-run -o json --run-id tok1))
    {out, 1} = sykli(ctx, ~w(run --target=k8s --keep-failed --run-id tok1))
    assert out =~ "[build] source-ok"
    assert out =~ "exit code 7"
    job = job!(ctx, "sykli-build-tok1")

    for {what, text} <- [manifest: manifest, output: out, job: SykliK8s.JSON.encode!(job)] do
      refute text =~ @token, "the token is in the #{what}"
    end

    assert SykliK8s.JSON.encode!(job) =~ "git-token-2", "the Job names the Secret (and nothing more)"
  end

  test "SSH with the right known_hosts clones; a wrong host key fails saying so", ctx do
    sshd = Cluster.program!("sykli-git-sshd", ["--root", ctx.srv])
    remote!(ctx, sshd["url_base"] <> "/repo.git")
    key = File.read!(sshd["client_key"])

    RealCluster.api_post!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/secrets", %{
      metadata: %{name: "deploy-key"},
      type: "kubernetes.io/ssh-auth",
      stringData: %{"ssh-privatekey" => key}
    })

    for {name, line} <- [{"right-hosts", sshd["known_hosts"]}, {"wrong-hosts", sshd["wrong_known_hosts"]}] do
      RealCluster.api_post!(ctx.info, "/api/v1/namespaces/#{ctx.ns}/configmaps", %{
        metadata: %{name: name},
        data: %{"known_hosts" => line <> "\n"}
      })
    end

    # Without known_hosts: a build-time error, before anything is contacted.
    config!(ctx, ~s(git_ssh_secret: "deploy-key"))
    {out, 1} = sykli(ctx, ~w(run --target=k8s --run-id nokh))
    assert out =~ "git_ssh_secret needs git_known_hosts"
    assert RealCluster.jobs(ctx.info, ctx.ns) == []

    config!(ctx, ~s(git_ssh_secret: "deploy-key", git_known_hosts: "right-hosts"))
    {out, 1} = sykli(ctx, ~w(run --target=k8s --run-id ssh1))
    assert out =~ "[build] source-ok"
    assert out =~ "exit code 7"
    refute out =~ key |> String.split("\n") |> Enum.at(1)

    config!(ctx, ~s(git_ssh_secret: "deploy-key", git_known_hosts: "wrong-hosts"))
    {out, 1} = sykli(ctx, ~w(run --target=k8s --run-id ssh2))
    assert out =~ "the ssh host key of the server does not match git_known_hosts"
    refute out =~ "source-ok"
  end
end
