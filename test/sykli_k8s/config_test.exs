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
        unschedulable_grace: 30, s3: [bucket: "b", region: "eu-west-1", force_path_style: true]
      """)

    assert {:ok, config} = Config.load(root)
    assert config.namespace == "ci"
    assert config.clone_depth == :full
    assert config.sparse == ["src", "docs"]
    assert config.s3 == [bucket: "b", region: "eu-west-1", force_path_style: true]
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
      {"lfs: \"yes\"", ~s(:lfs is "yes", but must be true, false or :auto)}
    ]

    for {setting, expected} <- cases do
      root = with_config!("import Config\nconfig :sykli, :k8s, #{setting}\n")
      assert {:error, %SykliK8s.Error{kind: :invalid_config, message: message}} = Config.load(root)
      assert message =~ expected, "#{setting}: #{message}"
      assert message =~ Config.path(root)
      refute message =~ ~s("x"), "a value under :s3 is never echoed: #{message}"
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
