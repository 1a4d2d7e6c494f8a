defmodule SykliK8s.JSON do
  @moduledoc """
  JSON for plain Elixir data, through serde_json in the NIF (OTP 25 has no JSON module and
  hex packages are out of reach).
  """

  @doc "Encodes maps (atom or string keys), lists, strings, numbers, booleans and nil."
  @spec encode(term(), keyword()) :: {:ok, String.t()} | {:error, SykliK8s.Error.t()}
  def encode(data, opts \\ []) do
    SykliK8s.Error.wrap(SykliK8s.Native.json_encode(data, Keyword.get(opts, :pretty, false)))
  end

  @spec encode!(term(), keyword()) :: String.t()
  def encode!(data, opts \\ []), do: unwrap!(encode(data, opts))

  @doc "Decodes JSON text; objects become maps with string keys."
  @spec decode(String.t()) :: {:ok, term()} | {:error, SykliK8s.Error.t()}
  def decode(text) when is_binary(text), do: SykliK8s.Error.wrap(SykliK8s.Native.json_decode(text))

  @spec decode!(String.t()) :: term()
  def decode!(text), do: unwrap!(decode(text))

  defp unwrap!({:ok, value}), do: value
  defp unwrap!({:error, error}), do: raise(error)
end
