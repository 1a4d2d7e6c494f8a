defmodule SykliK8s.Error do
  @moduledoc """
  The one error shape of sykli's public functions: `{:error, %SykliK8s.Error{kind: atom}}`.

  `kind` is matchable (`:not_a_git_repo`, `:no_commits`, `:local_remote`, `:invalid_url`,
  …); `message` is for people and names the object and the fix.
  """
  defexception [:kind, :message, details: %{}]

  @typedoc "`details` carries what a caller may act on, e.g. a failed task's `exit_code`."
  @type t :: %__MODULE__{kind: atom(), message: String.t(), details: map()}

  @doc false
  # The NIFs answer `{:error, {kind, message}}`.
  def wrap({:ok, _} = ok), do: ok
  def wrap({:error, {kind, message}}), do: {:error, %__MODULE__{kind: kind, message: message}}
end
