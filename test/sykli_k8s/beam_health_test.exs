defmodule SykliK8s.BeamHealthTest do
  # NIFs must never crash the VM or hold a normal scheduler: garbage gets ArgumentError,
  # and long work runs on dirty schedulers or the tokio runtime.
  use ExUnit.Case, async: false

  import SykliK8s.Test.GitRepo
  alias SykliK8s.Native

  defp garbage,
    do: [
      1,
      -1,
      2.5,
      :x,
      nil,
      {1},
      [1],
      ~c"chars",
      %{a: 1},
      <<0xFF>>,
      self(),
      make_ref(),
      1_180_591_620_717_411_303_424
    ]

  test "10,000 calls with garbage arguments raise ArgumentError and the VM stays up" do
    calls = [
      fn g -> Native.git_detect(g, %{}, 1) end,
      fn g -> Native.git_detect(".", g, 1) end,
      fn g -> Native.git_parse_remote_url(g) end,
      fn g -> Native.json_decode(g) end,
      fn g -> Native.k8s_job_name(g, "r") end,
      fn g -> Native.k8s_build_job(g, "{}", "j", "{}") end,
      fn g -> Native.k8s_render_pipeline("{}", g, "yaml") end,
      fn g -> Native.k8s_connect(g) end,
      fn g -> Native.k8s_cluster_info(g) end,
      fn g -> Native.k8s_cancel(g) end,
      fn g -> Native.k8s_run_job(g, "{}", "{}", make_ref()) end,
      fn g -> Native.git_resolve_ref(g, "origin", [], "", "main") end,
      fn g -> Native.git_confirm_pushed(".", g, [], "", "0") end,
      fn g -> Native.k8s_read_secret(g, "ns", "name", "key") end,
      fn g -> Native.k8s_create_volume(g, "ns", "{}") end,
      fn g -> Native.k8s_check_jobs(g, "[]", false) end,
      fn g -> Native.k8s_source_tree(g, [], false) end,
      fn g -> Native.k8s_upload_source(g, "{}", make_ref()) end,
      fn g -> Native.k8s_finish_run(g, "{}", make_ref()) end,
      fn g -> Native.k8s_copy_artifact(g, "{}", make_ref()) end,
      fn g -> Native.k8s_s3_publish(g, make_ref()) end,
      fn g -> Native.k8s_s3_check(g, make_ref()) end
    ]

    raised =
      for i <- 1..10_000, reduce: 0 do
        acc ->
          call = Enum.at(calls, rem(i, length(calls)))
          g = Enum.at(garbage(), rem(div(i, length(calls)), length(garbage())))

          try do
            call.(g)
            acc
          rescue
            ArgumentError -> acc + 1
          end
      end

    # Binaries are valid for some string arguments; everything else must raise.
    assert raised >= 9_000
    assert Process.alive?(self())
    assert {_, _} = Native.native_info()
  end

  test "no NIF holds a normal scheduler for more than 1 ms" do
    tmp = tmp_dir!()
    {work, _} = with_origin!(tmp)
    git!(work, ["remote", "set-url", "origin", "https://git.example.com/acme/shop.git"])
    for i <- 1..5000, do: write!(work, "f/#{rem(i, 50)}/#{i}.txt", "x\n")
    git!(work, ["add", "-A"])
    git!(work, ["commit", "-q", "-m", "many files"])
    pipeline = File.read!(Path.expand("../fixtures/pipeline.json", __DIR__))
    {:ok, ctx} = SykliK8s.Git.detect(work, env: %{})
    {:ok, state} = SykliK8s.Target.setup(git_context: ctx, dry_run: true, allow_dirty: true)

    {:ok, job} = SykliK8s.Target.build_job_manifest(%{name: "t", command: "true", container: "a"}, "j", state)

    job_json = SykliK8s.JSON.encode!(job)

    :erlang.system_monitor(self(), [{:long_schedule, 1}])

    # The work runs in another process: the monitor hears about every process but itself.
    try do
      Task.async(fn ->
        for _ <- 1..20 do
          {:ok, _} = SykliK8s.Git.detect(work, env: %{})
          {:ok, _} = SykliK8s.Target.render_pipeline(pipeline, state, :yaml)
          _ = Native.k8s_job_name(String.duplicate("long task name ", 50), "r1")
          {:ok, _} = Native.git_parse_remote_url("git@github.com:org/repo.git")
          {:ok, _} = Native.json_decode(job_json)
          {:error, _} = Native.k8s_connect(~s({"kubeconfig": "/nonexistent"}))
        end
      end)
      |> Task.await(120_000)
    after
      :erlang.system_monitor(:undefined)
    end

    refute_receive {:monitor, _, :long_schedule, _}, 200
  end
end
