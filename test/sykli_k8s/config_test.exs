defmodule SykliK8s.ConfigTest do
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  alias SykliK8s.Config

  defp with_config!(text) do
    root = tmp_dir!()
    write!(root, ".sykli/config.exs", text)
    root
  end

  test "no config file is an empty config" do
    assert {:ok, %{}} = Config.load(tmp_dir!())
  end

  test "every documented key reads back as written" do
    root =
      with_config!("""
      import Config
      config :sykli, :k8s,
        namespace: "ci", context: "prod", kubeconfig: "/etc/kube", source_strategy: :git_clone,
        source_pvc: "src", source_sync: :git, git_ssh_secret: "ssh", git_token_secret: "tok",
        git_credentials_secret: "creds", git_known_hosts: "hosts", clone_depth: :full,
        clone_attempts: 3, clone_backoff: 1, submodules: :recursive, submodule_depth: 2, lfs: :auto,
        sparse: ["src", "docs"], git_image: "alpine/git:v2.54.0", default_image: "alpine:3.20",
        create_namespace: true, keep_failed: false, ttl_seconds_after_finished: 60,
        unschedulable_grace: 30,
        s3: [bucket: "b", region: "eu-west-1", force_path_style: true, ca_bundle: "certs/minio-ca.pem"]
      """)

    assert {:ok, config} = Config.load(root)
    assert config.namespace == "ci"
    assert config.clone_depth == :full
    assert config.sparse == ["src", "docs"]

    assert config.s3 == [
             bucket: "b",
             region: "eu-west-1",
             force_path_style: true,
             ca_bundle: "certs/minio-ca.pem"
           ]

    assert map_size(config) == 24
  end

  test "an unknown key names the key, the file, and a likely fix" do
    root = with_config!("import Config\nconfig :sykli, :k8s, namspace: \"ci\"\n")
    assert {:error, %SykliK8s.Error{kind: :invalid_config, message: message}} = Config.load(root)
    assert message =~ Config.path(root)
    assert message =~ "unknown key :namspace"
    assert message =~ "did you mean :namespace?"
  end

  test "a wrong type names the key, the value and what it must be" do
    cases = [
      {"clone_depth: 0", ":clone_depth is 0, but must be a positive integer or :full"},
      {"source_strategy: :ftp", ":source_strategy is :ftp, but must be :git_clone, :pvc or :s3"},
      {"namespace: \"Not_Valid\"", ~s(:namespace is "Not_Valid", but must be a namespace name)},
      {"clone_attempts: 99", ":clone_attempts is 99, but must be an integer from 1 to 20"},
      {"sparse: \"src\"", ~s(:sparse is "src", but must be a list of paths)},
      {"s3: [bucket: \"b\", secret_key: \"x\"]", ":s3 has an unknown key :secret_key"},
      {"s3: [bucket: \"b\", force_path_style: \"yes\"]",
       ":s3 :force_path_style has a value of the wrong type"},
      {"s3: [bucket: \"b\", ca_bundle: true]", ":s3 :ca_bundle has a value of the wrong type"},
      {"lfs: \"yes\"", ~s(:lfs is "yes", but must be true, false or :auto)},
      {"workspace_size_limit: :big", ":workspace_size_limit is :big, but must be a size"}
    ]

    for {setting, expected} <- cases do
      root = with_config!("import Config\nconfig :sykli, :k8s, #{setting}\n")
      assert {:error, %SykliK8s.Error{kind: :invalid_config, message: message}} = Config.load(root)
      assert message =~ expected, "#{setting}: #{message}"
      assert message =~ Config.path(root)
      refute message =~ ~s("x"), "a value under :s3 is never echoed: #{message}"
    end
  end

  describe "workspace_size_limit" do
    @task %{
      name: "build",
      command: "make",
      container: "gcc:14",
      mounts: [%{resource: "src:.", path: "/src", type: "directory"}]
    }

    # The Job a run with this config file line would submit (built as a dry run: no cluster).
    defp job_with(work, line) do
      write!(work, ".sykli/config.exs", "import Config\nconfig :sykli, :k8s, #{line}\n")
      {:ok, ctx} = SykliK8s.Git.detect(work, env: %{})
      {:ok, state} = SykliK8s.Target.setup(git_context: ctx, workdir: work, dry_run: true)

      SykliK8s.Target.build_job_manifest(@task, "sykli-build-r1", state,
        resources: %{"src:." => %{type: "directory", path: "."}},
        run_id: "r1",
        allow_dirty: true
      )
    end

    defp size_limits(job) do
      for %{"emptyDir" => e, "name" => name} <- job["spec"]["template"]["spec"]["volumes"],
          into: %{},
          do: {name, e["sizeLimit"]}
    end

    test "sizes sykli's emptyDirs; a value Kubernetes would refuse fails the build, naming the key" do
      {work, _} = with_origin!(tmp_dir!())
      git!(work, ["remote", "set-url", "origin", "https://git.example.com/acme/shop.git"])

      assert {:ok, job} = job_with(work, "namespace: \"ci\"")
      assert size_limits(job) == %{"sykli-workspace" => "10Gi", "sykli-tmp" => "1Gi"}

      assert {:ok, job} = job_with(work, ~s(workspace_size_limit: "20Gi"))
      assert {:ok, %{workspace_size_limit: "20Gi"}} = Config.load(work)
      assert size_limits(job) == %{"sykli-workspace" => "20Gi", "sykli-tmp" => "1Gi"}

      assert {:error, %SykliK8s.Error{kind: :invalid_option, message: message}} =
               job_with(work, ~s(workspace_size_limit: "20gb"))

      assert message =~ ~s(workspace_size_limit: "20gb")
      assert message =~ ~s(did you mean "20Gi"?)
    end
  end

  test "a config file that raises is reported, not a crash" do
    root = with_config!("import Config\nraise \"boom from config\"\n")
    assert {:error, %SykliK8s.Error{kind: :invalid_config, message: message}} = Config.load(root)
    assert message =~ "could not be read"
    assert message =~ "boom from config"

    root = with_config!("import Config\nconfig :sykli, :k8s, [\n")
    assert {:error, %SykliK8s.Error{kind: :invalid_config}} = Config.load(root)
  end

  test "precedence: flags over the file over SYKLI_K8S_NAMESPACE over defaults; an unset flag keeps" do
    root = with_config!("import Config\nconfig :sykli, :k8s, namespace: \"from-file\", clone_depth: :full\n")
    env = %{"SYKLI_K8S_NAMESPACE" => "from-env"}

    {:ok, settings} = Config.effective(root, %{namespace: nil, keep_failed: true}, env)
    assert {:namespace, "from-file", ".sykli/config.exs"} in settings
    assert {:clone_depth, :full, ".sykli/config.exs"} in settings
    assert {:keep_failed, true, "command line"} in settings
    assert {:lfs, :auto, "default"} in settings

    {:ok, settings} = Config.effective(root, %{namespace: "from-flag"}, env)
    assert {:namespace, "from-flag", "command line"} in settings

    {:ok, settings} = Config.effective(tmp_dir!(), %{}, env)
    assert {:namespace, "from-env", "SYKLI_K8S_NAMESPACE"} in settings
  end

  describe "artifact_pvc and source_pvc" do
    # A kubeconfig whose server is port 1 on loopback: an API call would fail with a
    # connection error, never with :invalid_config.
    defp nowhere! do
      dir = tmp_dir!()
      {dir, SykliK8s.Test.Cluster.kubeconfig!(dir)}
    end

    test "the same claim for both is refused before any API call, naming both keys and the fix" do
      {dir, kubeconfig} = nowhere!()
      ctx = %Sykli.GitContext{url: "https://h/r.git", sha: String.duplicate("a", 40)}

      for {opts, claim} <- [
            {[source_pvc: "shared", artifact_pvc: "shared"], "shared"},
            # The default artifact claim counts too.
            {[source_pvc: "sykli-artifacts"], "sykli-artifacts"}
          ] do
        assert {:error, %SykliK8s.Error{kind: :invalid_config, message: message}} =
                 SykliK8s.Target.setup(
                   [kubeconfig: kubeconfig, workdir: dir, git_context: ctx, source_strategy: :pvc] ++ opts
                 )

        assert message =~ "artifact_pvc and source_pvc are both #{inspect(claim)}"
        assert message =~ ~s(give them two claims in .sykli/config.exs, e.g. artifact_pvc: "sykli-artifacts")
        refute message =~ "\n"
      end

      # From the config file as from options.
      root = with_config!("import Config\nconfig :sykli, :k8s, source_pvc: \"c\", artifact_pvc: \"c\"\n")
      {:ok, settings} = Config.resolve(root)
      assert {:error, %SykliK8s.Error{kind: :invalid_config}} = Config.check_claims(settings)

      # Two claims, or no artifact claim at all: fine.
      assert :ok = Config.check_claims(%{source_pvc: "src", artifact_pvc: "sykli-artifacts"})
      assert :ok = Config.check_claims(%{source_pvc: "src", artifact_pvc: false})
      assert :ok = Config.check_claims(%{artifact_pvc: "sykli-artifacts"})

      assert {:ok, _} =
               SykliK8s.Target.setup(
                 kubeconfig: kubeconfig,
                 workdir: dir,
                 git_context: ctx,
                 source_pvc: "sykli-artifacts",
                 artifact_pvc: "other",
                 dry_run: true
               )
    end
  end

  test "the default git image shown is the one the manifests use" do
    {:ok, settings} = Config.effective(tmp_dir!(), %{}, %{})
    {:git_image, shown, "default"} = List.keyfind(settings, :git_image, 0)
    ctx = %Sykli.GitContext{url: "https://h/r.git", sha: String.duplicate("a", 40)}
    {:ok, state} = SykliK8s.Target.setup(git_context: ctx, dry_run: true)
    assert state.git_image == shown
    # Without the setting, the Rust side's own default applies: it must be the same.
    state = Map.delete(state, :git_image)
    task = %{name: "t", command: "true", container: "alpine", mounts: [%{resource: "src", path: "/app"}]}

    {:ok, job} =
      SykliK8s.Target.build_job_manifest(task, "j", state,
        resources: %{"src" => %{type: "directory", path: "."}}
      )

    assert [%{"image" => ^shown}] = job["spec"]["template"]["spec"]["initContainers"]
  end
end
