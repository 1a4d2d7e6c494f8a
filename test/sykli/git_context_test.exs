defmodule Sykli.GitContextTest do
  use ExUnit.Case, async: true

  import Sykli.Test.GitRepo
  alias Sykli.GitContext

  setup do
    {:ok, tmp: tmp_dir!()}
  end

  describe "detect/2" do
    test "a clean, pushed branch", %{tmp: tmp} do
      {work, _} = with_origin!(tmp)
      git!(work, ["remote", "set-url", "origin", "https://git.example.com/group/sub/repo.git"])
      sha = head!(work)

      assert {:ok,
              %GitContext{
                root: ^work,
                remote: "origin",
                url: "https://git.example.com/group/sub/repo.git",
                branch: "main",
                branch_source: "HEAD",
                sha: ^sha,
                dirty: false,
                changes: %{total: 0, paths: []},
                pushed: true,
                submodules: [],
                lfs: false,
                shallow: false,
                worktree: false,
                warnings: []
              }} = GitContext.detect(work, env: %{})
    end

    test "counts every change and lists the first paths", %{tmp: tmp} do
      {work, _} = with_origin!(tmp)
      write!(work, "README.md", "changed\n")
      write!(work, "staged.txt", "s\n")
      git!(work, ["add", "staged.txt"])
      for i <- 1..5, do: write!(work, "u#{i}.txt", "u\n")

      {:ok, ctx} = GitContext.detect(work, env: %{}, max_paths: 3)
      assert ctx.dirty

      assert %{total: 7, staged: 1, modified: 1, deleted: 0, untracked: 5, conflicted: 0} = ctx.changes

      assert ctx.changes.paths == [
               %{path: "README.md", status: " M"},
               %{path: "staged.txt", status: "A "},
               %{path: "u1.txt", status: "??"}
             ]
    end

    test "an unpushed commit", %{tmp: tmp} do
      {work, _} = with_origin!(tmp)
      write!(work, "new.txt", "n\n")
      sha = commit_all!(work, "local")
      assert {:ok, %GitContext{sha: ^sha, pushed: false, dirty: false}} = GitContext.detect(work, env: %{})
    end

    test "no remote-tracking refs make pushed unknown", %{tmp: tmp} do
      dir = init!(Path.join(tmp, "r"))
      commit_all!(dir)

      assert {:ok, %GitContext{pushed: :unknown, url: nil, warnings: ["no remote" <> _]}} =
               GitContext.detect(dir)
    end

    test "a detached HEAD takes its branch from the CI variables given", %{tmp: tmp} do
      {work, _} = with_origin!(tmp)
      git!(work, ["checkout", "-q", "--detach"])
      assert {:ok, %{branch: nil, branch_source: nil}} = GitContext.detect(work, env: %{})

      assert {:ok, %{branch: "feature", branch_source: "CI_COMMIT_REF_NAME"}} =
               GitContext.detect(work, env: %{"CI_COMMIT_REF_NAME" => "feature", "UNRELATED" => "x"})
    end

    test "credentials in the remote URL never reach Elixir", %{tmp: tmp} do
      {work, _} = with_origin!(tmp)
      git!(work, ["remote", "set-url", "origin", "https://user:hunter2@git.example.com/r.git"])
      {:ok, ctx} = GitContext.detect(work, env: %{})
      assert ctx.url == "https://git.example.com/r.git"
      assert [warning] = ctx.warnings
      assert warning =~ "embeds credentials"
      refute inspect(ctx) =~ "hunter2"
    end

    test "from a subdirectory, a linked worktree, with submodules and LFS", %{tmp: tmp} do
      sub = init!(Path.join(tmp, "sub"))
      commit_all!(sub)
      {work, _} = with_origin!(tmp)
      write!(work, "src/deep/a.txt", "a\n")
      write!(work, ".gitattributes", "*.bin filter=lfs diff=lfs merge=lfs -text\n")
      git!(work, ["submodule", "add", "-q", "../sub", "vendor/sub"])
      sha = commit_all!(work, "more")

      assert {:ok, %{root: ^work, sha: ^sha, submodules: ["vendor/sub"], lfs: true, dirty: false}} =
               GitContext.detect(Path.join(work, "src/deep"), env: %{})

      wt = Path.join(tmp, "wt")
      git!(work, ["worktree", "add", "-q", "-b", "side", wt])
      assert {:ok, %{root: ^wt, branch: "side", worktree: true, sha: ^sha}} = GitContext.detect(wt, env: %{})
    end

    test "errors are Sykli.Error structs with a kind", %{tmp: tmp} do
      assert {:error, %Sykli.Error{kind: :not_a_git_repo, message: message}} = GitContext.detect(tmp)
      assert message =~ tmp
      init!(Path.join(tmp, "empty"))
      assert {:error, %Sykli.Error{kind: :no_commits}} = GitContext.detect(Path.join(tmp, "empty"))
      assert {:error, %Sykli.Error{kind: :not_found}} = GitContext.detect(Path.join(tmp, "nope"))
      assert_raise Sykli.Error, ~r/not inside a git repository/, fn -> GitContext.detect!(tmp) end
    end

    test "bad arguments raise ArgumentError" do
      assert_raise ArgumentError, fn -> GitContext.detect(123) end
      assert_raise ArgumentError, fn -> GitContext.detect(".", max_paths: -1) end
      assert_raise ArgumentError, fn -> GitContext.detect(".", env: %{"GIT_BRANCH" => :main}) end
    end
  end

  describe "parse_remote_url/1" do
    test "every remote form, nested groups included" do
      assert {:ok,
              %{
                scheme: "ssh",
                user: "git",
                host: "gitlab.com",
                port: nil,
                path: "group/sub/repo.git",
                owner: "group/sub",
                repo: "repo",
                https_url: "https://gitlab.com/group/sub/repo.git"
              }} = GitContext.parse_remote_url("git@gitlab.com:group/sub/repo.git")

      assert {:ok, %{scheme: "ssh", port: 2222, host: "h", path: "a/b.git"}} =
               GitContext.parse_remote_url("ssh://git@h:2222/a/b.git")

      assert {:ok, %{scheme: "https", user: nil, host: "github.com", owner: "org"}} =
               GitContext.parse_remote_url("https://github.com/org/repo")

      assert {:ok, %{scheme: "http", port: 8080}} = GitContext.parse_remote_url("http://h:8080/r.git")
      assert {:ok, %{scheme: "git", host: "127.0.0.1"}} = GitContext.parse_remote_url("git://127.0.0.1/r.git")
    end

    test "credentials are never returned" do
      assert {:ok, parsed} =
               GitContext.parse_remote_url("https://x-access-token:ghs_secret@github.com/o/r.git")

      assert parsed.user == nil
      refute inspect(parsed) =~ "ghs_secret"
    end

    test "local paths and file:// cannot be cloned by a cluster" do
      for url <- ["/srv/git/r.git", "./r", "../r.git", "file:///srv/r.git", "r"] do
        assert {:error, %Sykli.Error{kind: :local_remote}} = GitContext.parse_remote_url(url)
      end
    end

    test "invalid URLs say why" do
      assert {:error, %Sykli.Error{kind: :invalid_url, message: message}} =
               GitContext.parse_remote_url("ssh://-oProxyCommand=x/r")

      assert message =~ "starts with '-'"
    end
  end

  test "to_https_url/1" do
    assert GitContext.to_https_url("git@github.com:org/repo.git") == "https://github.com/org/repo.git"
    assert GitContext.to_https_url("ssh://git@h:22/a/b") == "https://h/a/b"
    assert GitContext.to_https_url("https://h/a.git") == "https://h/a.git"
    assert GitContext.to_https_url("/local/path") == nil
  end
end
