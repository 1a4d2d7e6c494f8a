defmodule SykliK8s.Test.Tools do
  @moduledoc "The Python tools scripts/setup installs for tests (validator, YAML parser)."

  import ExUnit.Assertions

  def venv_bin(name) do
    venv = System.get_env("SYKLI_VENV") || Path.join(System.user_home!(), ".cache/sykli/venv")
    bin = Path.join([venv, "bin", name])
    assert File.exists?(bin), "#{bin} is missing: run scripts/setup"
    bin
  end

  @doc "Strict schema validation of a YAML/JSON file; every document must be recognised."
  def kube_validate!(file, expected_documents) do
    {out, status} =
      System.cmd(venv_bin("kubernetes-validate"), ["--strict", "-k", "1.37.0", file], stderr_to_stdout: true)

    assert status == 0, "kubernetes-validate --strict failed:\n#{out}"
    assert length(Regex.scan(~r/ passed for resource /, out)) == expected_documents, out
  end

  @doc "Parses (multi-document) YAML with PyYAML, a real YAML parser."
  def parse_yaml!(file) do
    code = "import sys, json, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)"
    {out, 0} = System.cmd(venv_bin("python"), ["-c", code, file])
    SykliK8s.JSON.decode!(out)
  end
end
