defmodule SykliK8s.Test.S3Server do
  @moduledoc """
  A real S3-compatible server on 127.0.0.1 for end-to-end tests: s3s-fs (installed by
  scripts/setup), started through native/sykli_testkit's `sykli-s3-server`. It verifies
  SigV4 header signatures and presigned URLs (an expired one is `403 AccessDenied`), takes
  path-style requests only (`endpoint/<bucket>/<key>`), and stops when the test exits.
  See `sykli_testkit::s3_server` for what it checks and what it does not.
  """

  alias SykliK8s.Test.Cluster

  @doc """
  Starts a server storing under `dir`, with `buckets` created. Returns its JSON line as a
  map: `"endpoint"` (`http://127.0.0.1:PORT`), `"access_key"`, `"secret_key"`, `"region"`,
  `"root"` (the directory of the buckets), `"log"` (its request log) and `"pid"`. With
  `tls: true`, also `"tls_endpoint"` (`https://127.0.0.1:PORT`, a TLS front of a private CA)
  and `"ca_file"` (that CA, PEM).
  """
  def start!(dir, buckets \\ [], opts \\ []) do
    tls = if Keyword.get(opts, :tls, false), do: ["--tls"], else: []
    Cluster.program!("sykli-s3-server", ["--dir", dir] ++ Enum.flat_map(buckets, &["--bucket", &1]) ++ tls)
  end

  @doc "The file holding `key` of `bucket`: overwrite it to corrupt the object."
  def object_path(server, bucket, key), do: Path.join([server["root"], bucket, key])

  @doc "The environment an AWS SDK or CLI needs to talk to `server`."
  def aws_env(server) do
    [
      {"AWS_ACCESS_KEY_ID", server["access_key"]},
      {"AWS_SECRET_ACCESS_KEY", server["secret_key"]},
      {"AWS_REGION", server["region"]},
      {"AWS_DEFAULT_REGION", server["region"]},
      {"AWS_ENDPOINT_URL", server["endpoint"]}
    ]
  end
end
