defmodule SykliK8s.GitTest do
  use ExUnit.Case, async: true

  import SykliK8s.Test.GitRepo
  alias Sykli.GitContext
  alias SykliK8s.Git

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
              }} = Git.detect(work, env: %{})
    end

    test "counts every change and lists the first paths", %{tmp: tmp} do
      {work, _} = with_origin!(tmp)
      write!(work, "README.md", "changed\n")
      write!(work, "staged.txt", "s\n")
      git!(work, ["add", "staged.txt"])
      for i <- 1..5, do: write!(work, "u#{i}.txt", "u\n")

      {:ok, ctx} = Git.detect(work, env: %{}, max_paths: 3)
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
      assert {:ok, %GitContext{sha: ^sha, pushed: false, dirty: false}} = Git.detect(work, env: %{})
    end

    test "no remote-tracking refs make pushed unknown", %{tmp: tmp} do
      dir = init!(Path.join(tmp, "r"))
      commit_all!(dir)

      assert {:ok, %GitContext{pushed: :unknown, url: nil, warnings: ["no remote" <> _]}} = Git.detect(dir)
    end

    test "a detached HEAD takes its branch from the CI variables given", %{tmp: tmp} do
      {work, _} = with_origin!(tmp)
      git!(work, ["checkout", "-q", "--detach"])
      assert {:ok, %{branch: nil, branch_source: nil}} = Git.detect(work, env: %{})

      assert {:ok, %{branch: "feature", branch_source: "CI_COMMIT_REF_NAME"}} =
               Git.detect(work, env: %{"CI_COMMIT_REF_NAME" => "feature", "UNRELATED" => "x"})
    end

    test "credentials in the remote URL never reach Elixir", %{tmp: tmp} do
      {work, _} = with_origin!(tmp)
      git!(work, ["remote", "set-url", "origin", "https://user:hunter2@git.example.com/r.git"])
      {:ok, ctx} = Git.detect(work, env: %{})
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
               Git.detect(Path.join(work, "src/deep"), env: %{})

      wt = Path.join(tmp, "wt")
      git!(work, ["worktree", "add", "-q", "-b", "side", wt])
      assert {:ok, %{root: ^wt, branch: "side", worktree: true, sha: ^sha}} = Git.detect(wt, env: %{})
    end

    test "errors are SykliK8s.Error structs with a kind", %{tmp: tmp} do
      assert {:error, %SykliK8s.Error{kind: :not_a_git_repo, message: message}} = Git.detect(tmp)
      assert message =~ tmp
      init!(Path.join(tmp, "empty"))
      assert {:error, %SykliK8s.Error{kind: :no_commits}} = Git.detect(Path.join(tmp, "empty"))
      assert {:error, %SykliK8s.Error{kind: :not_found}} = Git.detect(Path.join(tmp, "nope"))
      assert_raise SykliK8s.Error, ~r/not inside a git repository/, fn -> Git.detect!(tmp) end
    end

    test "bad arguments raise ArgumentError" do
      assert_raise ArgumentError, fn -> Git.detect(123) end
      assert_raise ArgumentError, fn -> Git.detect(".", max_paths: -1) end
      assert_raise ArgumentError, fn -> Git.detect(".", env: %{"GIT_BRANCH" => :main}) end
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
              }} = Git.parse_remote_url("git@gitlab.com:group/sub/repo.git")

      assert {:ok, %{scheme: "ssh", port: 2222, host: "h", path: "a/b.git"}} =
               Git.parse_remote_url("ssh://git@h:2222/a/b.git")

      assert {:ok, %{scheme: "https", user: nil, host: "github.com", owner: "org"}} =
               Git.parse_remote_url("https://github.com/org/repo")

      assert {:ok, %{scheme: "http", port: 8080}} = Git.parse_remote_url("http://h:8080/r.git")
      assert {:ok, %{scheme: "git", host: "127.0.0.1"}} = Git.parse_remote_url("git://127.0.0.1/r.git")
    end

    test "credentials are never returned" do
      assert {:ok, parsed} = Git.parse_remote_url("https://x-access-token:ghs_secret@github.com/o/r.git")

      assert parsed.user == nil
      refute inspect(parsed) =~ "ghs_secret"
    end

    test "local paths and file:// cannot be cloned by a cluster" do
      for url <- ["/srv/git/r.git", "./r", "../r.git", "file:///srv/r.git", "r"] do
        assert {:error, %SykliK8s.Error{kind: :local_remote}} = Git.parse_remote_url(url)
      end
    end

    test "invalid URLs say why" do
      assert {:error, %SykliK8s.Error{kind: :invalid_url, message: message}} =
               Git.parse_remote_url("ssh://-oProxyCommand=x/r")

      assert message =~ "starts with '-'"
    end
  end

  test "to_https_url/1" do
    assert Git.to_https_url("git@github.com:org/repo.git") == "https://github.com/org/repo.git"
    assert Git.to_https_url("ssh://git@h:22/a/b") == "https://h/a/b"
    assert Git.to_https_url("https://h/a.git") == "https://h/a.git"
    assert Git.to_https_url("/local/path") == nil
  end

  describe "Sykli.GitContext, as sykli calls it" do
    test "detect/1 answers the context bare, with the fields sykli reads by dot access", %{tmp: tmp} do
      {work, _} = with_origin!(tmp)
      sha = head!(work)
      File.mkdir_p!(Path.join(work, "sub"))

      ctx = GitContext.detect(Path.join(work, "sub"))
      assert %GitContext{} = ctx
      assert is_map(ctx)
      assert {ctx.sha, ctx.branch, ctx.dirty} == {sha, "main", false}
      assert ctx.url =~ "origin.git"

      write!(work, "new.txt", "untracked counts, as in git status --porcelain\n")
      assert GitContext.detect(work).dirty == true
    end

    test "detect/1 on no repository, or one without a commit, is {:error, :not_a_git_repo}", %{tmp: tmp} do
      assert GitContext.detect(tmp) == {:error, :not_a_git_repo}
      init!(Path.join(tmp, "empty"))
      assert GitContext.detect(Path.join(tmp, "empty")) == {:error, :not_a_git_repo}
      assert GitContext.detect(Path.join(tmp, "missing")) == {:error, :not_a_git_repo}
    end

    test "parse_remote_url/1 gives protocol, host, owner and repo" do
      assert {:ok, %{protocol: :ssh, host: "gitlab.com", owner: "group/sub", repo: "repo"}} =
               GitContext.parse_remote_url("git@gitlab.com:group/sub/repo.git")

      assert {:ok, %{protocol: :https, host: "github.com", owner: "org", repo: "repo"}} =
               GitContext.parse_remote_url("https://github.com/org/repo.git")

      assert {:ok, %{protocol: :https, host: "h"}} = GitContext.parse_remote_url("http://h:8080/o/r")
      assert {:ok, %{protocol: :ssh, host: "h"}} = GitContext.parse_remote_url("ssh://git@h:2222/a/b.git")

      for url <- ["/local/path", "file:///srv/r.git", "git://h/r.git", "", "not a url", nil] do
        assert GitContext.parse_remote_url(url) == {:error, :invalid_url}, inspect(url)
      end
    end

    test "to_https_url/1: https unchanged, ssh as https://host/owner/repo.git" do
      assert GitContext.to_https_url("https://h/o/r") == {:ok, "https://h/o/r"}

      assert GitContext.to_https_url("git@github.com:org/repo.git") ==
               {:ok, "https://github.com/org/repo.git"}

      assert GitContext.to_https_url("ssh://git@h:22/a/b") == {:ok, "https://h/a/b.git"}
      assert GitContext.to_https_url("/local/path") == {:error, :invalid_url}
    end
  end
end
