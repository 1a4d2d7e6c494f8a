defmodule Sykli.Target.K8sOptions do
  @moduledoc """
  Test double of sykli's `Sykli.Target.K8sOptions` (core/lib/sykli/target/k8s_options.ex):
  the struct the task's `k8s` field holds, `parse/1` of the pipeline JSON `k8s` map (string
  keys; `nil` or `%{}` → `nil`; a toleration's operator defaults to "Equal"; unknown keys are
  ignored, so the SDKs' flat `{memory, cpu, gpu, raw}` keeps only `gpu`), `validate/1` and
  `validate!/1`, and `Resources.resolve/1`.
  """

  defstruct [
    :node_selector,
    :tolerations,
    :affinity,
    :priority_class_name,
    :resources,
    :gpu,
    :service_account,
    :security_context,
    :host_network,
    :dns_policy,
    :volumes,
    :labels,
    :annotations,
    :namespace
  ]

  @type t :: %__MODULE__{}

  defmodule Resources do
    @moduledoc "CPU/memory requests and limits; `cpu`/`memory` set both."
    defstruct [:request_cpu, :request_memory, :limit_cpu, :limit_memory, :cpu, :memory]
    @type t :: %__MODULE__{}

    def resolve(%__MODULE__{} = r) do
      %__MODULE__{
        request_cpu: r.request_cpu || r.cpu,
        request_memory: r.request_memory || r.memory,
        limit_cpu: r.limit_cpu || r.cpu,
        limit_memory: r.limit_memory || r.memory
      }
    end
  end

  defmodule Toleration do
    @moduledoc false
    defstruct [:key, :operator, :value, :effect]
    @type t :: %__MODULE__{}
  end

  defmodule Affinity do
    @moduledoc false
    defstruct [:node_affinity, :pod_affinity, :pod_anti_affinity]
    @type t :: %__MODULE__{}
  end

  defmodule NodeAffinity do
    @moduledoc false
    defstruct [:required_labels, :preferred_labels]
    @type t :: %__MODULE__{}
  end

  defmodule PodAffinity do
    @moduledoc false
    defstruct [:required_labels, :topology_key]
    @type t :: %__MODULE__{}
  end

  defmodule SecurityContext do
    @moduledoc false
    defstruct [
      :run_as_user,
      :run_as_group,
      :run_as_non_root,
      :privileged,
      :read_only_root_filesystem,
      :add_capabilities,
      :drop_capabilities
    ]

    @type t :: %__MODULE__{}
  end

  defmodule Volume do
    @moduledoc false
    defstruct [:name, :mount_path, :config_map, :secret, :empty_dir, :host_path, :pvc]
    @type t :: %__MODULE__{}
  end

  defmodule ConfigMapVolume do
    @moduledoc false
    defstruct [:name]
  end

  defmodule SecretVolume do
    @moduledoc false
    defstruct [:name]
  end

  defmodule EmptyDirVolume do
    @moduledoc false
    defstruct [:medium, :size_limit]
  end

  defmodule HostPathVolume do
    @moduledoc false
    defstruct [:path, :type]
  end

  defmodule PVCVolume do
    @moduledoc false
    defstruct [:claim_name]
  end

  def parse(nil), do: nil
  def parse(map) when map == %{}, do: nil

  def parse(map) when is_map(map) do
    %__MODULE__{
      node_selector: map["node_selector"],
      tolerations: list(map["tolerations"], &toleration/1),
      affinity: maybe(map["affinity"], &affinity/1),
      priority_class_name: map["priority_class_name"],
      resources: maybe(map["resources"], &resources/1),
      gpu: map["gpu"],
      service_account: map["service_account"],
      security_context: maybe(map["security_context"], &security_context/1),
      host_network: map["host_network"],
      dns_policy: map["dns_policy"],
      volumes: list(map["volumes"], &volume/1),
      labels: map["labels"],
      annotations: map["annotations"],
      namespace: map["namespace"]
    }
  end

  defp maybe(nil, _fun), do: nil
  defp maybe(map, fun), do: fun.(map)

  defp list(nil, _fun), do: nil
  defp list(items, fun) when is_list(items), do: Enum.map(items, fun)

  defp toleration(t),
    do: %Toleration{key: t["key"], operator: t["operator"] || "Equal", value: t["value"], effect: t["effect"]}

  defp affinity(a) do
    %Affinity{
      node_affinity:
        maybe(
          a["node_affinity"],
          &%NodeAffinity{required_labels: &1["required_labels"], preferred_labels: &1["preferred_labels"]}
        ),
      pod_affinity: maybe(a["pod_affinity"], &pod_affinity/1),
      pod_anti_affinity: maybe(a["pod_anti_affinity"], &pod_affinity/1)
    }
  end

  defp pod_affinity(p),
    do: %PodAffinity{required_labels: p["required_labels"], topology_key: p["topology_key"]}

  defp resources(r) do
    %Resources{
      request_cpu: r["request_cpu"],
      request_memory: r["request_memory"],
      limit_cpu: r["limit_cpu"],
      limit_memory: r["limit_memory"],
      cpu: r["cpu"],
      memory: r["memory"]
    }
  end

  defp security_context(s) do
    %SecurityContext{
      run_as_user: s["run_as_user"],
      run_as_group: s["run_as_group"],
      run_as_non_root: s["run_as_non_root"],
      privileged: s["privileged"],
      read_only_root_filesystem: s["read_only_root_filesystem"],
      add_capabilities: s["add_capabilities"],
      drop_capabilities: s["drop_capabilities"]
    }
  end

  defp volume(v) do
    %Volume{
      name: v["name"],
      mount_path: v["mount_path"],
      config_map: maybe(v["config_map"], &%ConfigMapVolume{name: &1["name"]}),
      secret: maybe(v["secret"], &%SecretVolume{name: &1["name"]}),
      empty_dir: maybe(v["empty_dir"], &%EmptyDirVolume{medium: &1["medium"], size_limit: &1["size_limit"]}),
      host_path: maybe(v["host_path"], &%HostPathVolume{path: &1["path"], type: &1["type"]}),
      pvc: maybe(v["pvc"], &%PVCVolume{claim_name: &1["claim_name"]})
    }
  end

  # ── validation (upstream's order: resources, tolerations, dns_policy, volumes) ──

  @memory ~r/^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$/
  @cpu ~r/^[0-9]+(\.[0-9]+)?m?$/
  @operators ["Exists", "Equal"]
  @effects ["NoSchedule", "PreferNoSchedule", "NoExecute"]
  @dns_policies ["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"]

  def validate(nil), do: {:ok, nil}

  def validate(%__MODULE__{} = opts) do
    errors =
      resource_errors(opts.resources) ++
        toleration_errors(opts.tolerations) ++ dns_errors(opts.dns_policy) ++ volume_errors(opts.volumes)

    if errors == [], do: {:ok, opts}, else: {:error, errors}
  end

  def validate!(opts) do
    case validate(opts) do
      {:ok, _} -> nil
      {:error, [{field, value, message} | _]} -> "k8s.#{field}: #{message} (got #{inspect(value)})"
    end
  end

  defp resource_errors(nil), do: []

  defp resource_errors(%Resources{} = r) do
    Enum.flat_map(
      [memory: r.memory, request_memory: r.request_memory, limit_memory: r.limit_memory],
      fn {f, v} -> memory_error("resources.#{f}", v) end
    ) ++
      Enum.flat_map([cpu: r.cpu, request_cpu: r.request_cpu, limit_cpu: r.limit_cpu], fn {f, v} ->
        cpu_error("resources.#{f}", v)
      end)
  end

  defp memory_error(_field, nil), do: []

  defp memory_error(field, value) do
    if Regex.match?(@memory, value) do
      []
    else
      lower = String.downcase(value)

      suggestion =
        cond do
          String.ends_with?(lower, "gb") -> " (did you mean 'Gi'?)"
          String.ends_with?(lower, "mb") -> " (did you mean 'Mi'?)"
          String.ends_with?(lower, "kb") -> " (did you mean 'Ki'?)"
          true -> ""
        end

      [{field, value, "invalid memory format, use Ki/Mi/Gi/Ti (e.g., '512Mi', '4Gi')" <> suggestion}]
    end
  end

  defp cpu_error(_field, nil), do: []

  defp cpu_error(field, value) do
    if Regex.match?(@cpu, value),
      do: [],
      else: [{field, value, "invalid CPU format, use cores or millicores (e.g., '500m', '0.5', '2')"}]
  end

  defp toleration_errors(nil), do: []

  defp toleration_errors(tolerations) do
    tolerations
    |> Enum.with_index()
    |> Enum.flat_map(fn {%Toleration{operator: op, effect: effect}, i} ->
      op_error =
        if is_binary(op) and op != "" and op not in @operators,
          do: [{"tolerations[#{i}].operator", op, "must be 'Exists' or 'Equal'"}],
          else: []

      effect_error =
        if is_binary(effect) and effect != "" and effect not in @effects,
          do: [
            {"tolerations[#{i}].effect", effect, "must be 'NoSchedule', 'PreferNoSchedule', or 'NoExecute'"}
          ],
          else: []

      op_error ++ effect_error
    end)
  end

  defp dns_errors(nil), do: []
  defp dns_errors(policy) when policy in @dns_policies, do: []

  defp dns_errors(policy),
    do: [{"dns_policy", policy, "must be one of: ClusterFirst, ClusterFirstWithHostNet, Default, None"}]

  defp volume_errors(nil), do: []

  defp volume_errors(volumes) do
    volumes
    |> Enum.with_index()
    |> Enum.flat_map(fn {%Volume{name: name, mount_path: path}, i} ->
      name_error = if name in [nil, ""], do: [{"volumes[#{i}].name", "", "volume name is required"}], else: []

      path_error =
        cond do
          path in [nil, ""] ->
            [{"volumes[#{i}].mount_path", "", "mount path is required"}]

          is_binary(path) and not String.starts_with?(path, "/") ->
            [{"volumes[#{i}].mount_path", path, "mount path must be absolute (start with /)"}]

          true ->
            []
        end

      name_error ++ path_error
    end)
  end
end
