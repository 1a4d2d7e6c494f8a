# sykli git-clone init container. A constant: every value arrives in an environment
# variable and is only ever used quoted. POSIX sh (dash, busybox ash).
#
#   SYKLI_GIT_URL       remote URL (credential-free)
#   SYKLI_GIT_SHA       the exact commit to check out (40 or 64 hex)
#   SYKLI_GIT_REF       branch the commit is on, for servers that refuse fetch-by-SHA (may be empty)
#   SYKLI_GIT_DEPTH     history depth to fetch: a positive number, or "full"
#   SYKLI_WORKSPACE     where the working tree goes (the shared volume)
#   SYKLI_CLONE_ATTEMPTS  fetch attempts on transient failures (default 5)
#   SYKLI_CLONE_BACKOFF   first retry delay in seconds, doubled each time, with jitter (default 2)
#
# Access (all optional; secrets are files under $SYKLI_GIT_ACCESS, never values here):
#   SYKLI_GIT_SSH=1             ssh/ssh-key: the private key; with SYKLI_GIT_KNOWN_HOSTS=1
#                               known-hosts/known_hosts is the only trusted source of host keys,
#                               else SYKLI_GIT_SSH_ACCEPT_NEW=1 trusts the first key seen
#   SYKLI_GIT_TOKEN=1           token/token (and token/username, else SYKLI_GIT_TOKEN_USERNAME),
#                               for the clone URL's own host, over https only
#   SYKLI_GIT_CREDENTIALS=1     credentials/git-credentials (git's store format), for the hosts
#                               it lists, over https only
#   SYKLI_GIT_SUBMODULES        off | on | recursive, SYKLI_GIT_SUBMODULE_DEPTH as SYKLI_GIT_DEPTH
#   SYKLI_GIT_LFS=1             real LFS content: the checkout fetches what it writes, and then
#                               no checked-out file the attributes route through LFS may be a
#                               pointer (submodules included), else the clone fails naming it
#   SYKLI_GIT_LFS_CHECK=1       (lfs: :auto, LFS not seen) the same check without LFS: a
#                               pointer left (in a submodule the laptop had not checked
#                               out) fails the clone, asking for lfs: true
#   SYKLI_GIT_SPARSE            directories, one per line: cone sparse checkout over a
#                               blob-filtered partial clone
#   SYKLI_GIT_SPARSE_WIDE       set when SYKLI_GIT_SPARSE was narrowed to the task's mounts:
#                               the directories to check out instead ("." for every file)
#                               when one of them is reached through a symbolic link
set -eu
umask 0000 # the task container may run as any uid: it must be able to write the tree

ws=$SYKLI_WORKSPACE
# shellcheck disable=SC2153 # set by the manifest, like every SYKLI_ variable
sha=$SYKLI_GIT_SHA
ref=${SYKLI_GIT_REF:-}
attempts=${SYKLI_CLONE_ATTEMPTS:-5}
backoff=${SYKLI_CLONE_BACKOFF:-2}
out=${TMPDIR:-/tmp}/sykli-clone.$$
msg_file=/dev/termination-log

log() { printf 'sykli-clone: %s\n' "$*" >&2; }
access=${SYKLI_GIT_ACCESS:-/sykli/git}
# Private to this container (its own /tmp volume), removed however the script ends.
private=${TMPDIR:-/tmp}/sykli-access.$$
trap 'rm -rf "$private" "$out"' EXIT
trap 'exit 1' HUP INT TERM
# One line (a file name git printed may hold a newline), on stderr and as the termination
# message.
fail() {
  msg=$(printf '%s' "$*" | tr '\n' ' ')
  log "error: $msg"
  printf '%s\n' "$msg" >"$msg_file" 2>/dev/null || true
  exit 1
}

# Prints the depth option (nothing for full history). The depth is validated as digits
# before the manifest is built, so the unquoted expansion below yields one word at most.
depth_args() {
  [ "$SYKLI_GIT_DEPTH" = full ] || printf '%s\n' "--depth=$SYKLI_GIT_DEPTH"
}

# Runs one git fetch, output kept in $out. Classifies a failure: 2 when the server refuses
# to serve the commit by id (use the branch fallback), 3 when retrying cannot help
# (authentication, missing repository), 4 for an ssh host key that is not trusted, 5 for a
# TLS certificate that is not, 1 otherwise (transient: retry).
fetch_once() {
  # shellcheck disable=SC2046
  if git fetch --no-tags --progress $(filter_args) "$@" >"$out" 2>&1; then
    show_fetch
    return 0
  fi
  show_fetch
  if grep -q -e 'not our ref' -e 'unadvertised object' -e "couldn't find remote ref" -e 'no such remote ref' "$out"; then
    return 2
  fi
  if grep -q -e 'REMOTE HOST IDENTIFICATION HAS CHANGED' -e 'Host key verification failed' "$out"; then
    return 4
  fi
  if grep -q -i -e 'certificate verif' -e 'SSL certificate problem' -e 'unable to get local issuer' "$out"; then
    return 5
  fi
  if grep -q -i -e 'authentication failed' -e 'could not read username' -e 'permission denied' \
    -e 'repository not found' -e 'does not appear to be a git repository' -e 'host key verification failed' \
    -e 'returned error: 40[134]' -e 'not found' "$out"; then
    return 3
  fi
  return 1
}

# Shows a fetch's output. A server that does not allow filters (uploadpack.allowFilter)
# sends every blob, as a full clone: said once, and later fetches no longer ask for it.
show_fetch() {
  if [ -n "$filter" ] && grep -q 'filtering not recognized by server' "$out"; then
    grep -v 'filtering not recognized by server' "$out" >&2 || true
    filter=""
    log "the server does not allow filters (uploadpack.allowFilter): fetching every file of the commit, as a full clone; the checkout is the same"
  else
    cat "$out" >&2
  fi
}

# fetch_once with exponential backoff and jitter on transient failures.
fetch() {
  n=1
  delay=$backoff
  while :; do
    rc=0
    fetch_once "$@" || rc=$?
    [ "$rc" -eq 1 ] || return "$rc" # 0 done; others: retrying cannot help
    [ "$n" -lt "$attempts" ] || return 1
    jitter=$(od -An -N2 -tu2 /dev/urandom 2>/dev/null | tr -d ' ') || jitter=0
    wait_s=$((delay + ${jitter:-0} % (delay + 1)))
    log "fetch failed (attempt $n of $attempts); retrying in ${wait_s}s"
    sleep "$wait_s"
    n=$((n + 1))
    delay=$((delay * 2))
    [ "$delay" -le 30 ] || delay=30
  done
}

has_commit() { git cat-file -e "$sha^{commit}" 2>/dev/null; }

# Adds one setting for every git this script runs (submodules and git-lfs included),
# without writing it anywhere.
add_config() {
  i=${GIT_CONFIG_COUNT:-0}
  export "GIT_CONFIG_KEY_$i=$1" "GIT_CONFIG_VALUE_$i=$2"
  GIT_CONFIG_COUNT=$((i + 1))
  export GIT_CONFIG_COUNT
}

mkdir -m 700 "$private"
# No credential helper of the image's own config: only what is configured here.
add_config credential.helper ""
add_config protocol.file.allow never

if [ -n "${SYKLI_GIT_SSH:-}" ]; then
  # ssh refuses a key others can read: use a private copy.
  cp "$access/ssh/ssh-key" "$private/ssh-key"
  chmod 600 "$private/ssh-key"
  if [ -n "${SYKLI_GIT_KNOWN_HOSTS:-}" ]; then
    cp "$access/known-hosts/known_hosts" "$private/known_hosts"
    strict=yes
  elif [ -n "${SYKLI_GIT_SSH_ACCEPT_NEW:-}" ]; then
    : >"$private/known_hosts"
    strict=accept-new
    log "warning: trusting the ssh host key the server shows (git_ssh_accept_new)"
  else
    fail "an ssh key without known hosts: set git_known_hosts"
  fi
  cat >"$private/ssh" <<'EOF'
#!/bin/sh
exec ssh -F /dev/null -i "$SYKLI_SSH_DIR/ssh-key" -o IdentitiesOnly=yes -o BatchMode=yes \
  -o StrictHostKeyChecking="$SYKLI_SSH_STRICT" -o UserKnownHostsFile="$SYKLI_SSH_DIR/known_hosts" \
  -o GlobalKnownHostsFile=/dev/null "$@"
EOF
  chmod 700 "$private/ssh"
  SYKLI_SSH_DIR=$private
  SYKLI_SSH_STRICT=$strict
  GIT_SSH=$private/ssh
  GIT_SSH_VARIANT=ssh
  export SYKLI_SSH_DIR SYKLI_SSH_STRICT GIT_SSH GIT_SSH_VARIANT
  unset GIT_SSH_COMMAND
fi

# Credentials go only where they are for. Git (submodules and git-lfs included) asks one
# helper, written here: it answers `get` over https only, a token for the clone URL's own
# host and port only, and the git-credentials file for the hosts that file lists. Nothing
# prompts: no askpass, no terminal.
unset GIT_ASKPASS SSH_ASKPASS
GIT_TERMINAL_PROMPT=0
export GIT_TERMINAL_PROMPT
add_config core.askPass ""
if [ -n "${SYKLI_GIT_TOKEN:-}" ] || [ -n "${SYKLI_GIT_CREDENTIALS:-}" ]; then
  # scheme://[user@]host[:port]/path -> host[:port], as git names it to helpers.
  origin_host=${SYKLI_GIT_URL#*://}
  origin_host=${origin_host%%/*}
  origin_host=${origin_host##*@}
  SYKLI_CRED_HOST=$(printf '%s' "$origin_host" | tr '[:upper:]' '[:lower:]')
  SYKLI_CRED_TOKEN=${SYKLI_GIT_TOKEN:-}
  SYKLI_CRED_STORE=""
  if [ -n "${SYKLI_GIT_CREDENTIALS:-}" ]; then
    # The store helper may write back: give it a private copy, never the workspace.
    cp "$access/credentials/git-credentials" "$private/git-credentials"
    chmod 600 "$private/git-credentials"
    SYKLI_CRED_STORE=$private/git-credentials
  fi
  SYKLI_GIT_ACCESS=$access
  export SYKLI_CRED_HOST SYKLI_CRED_TOKEN SYKLI_CRED_STORE SYKLI_GIT_ACCESS
  cat >"$private/credential" <<'EOF'
#!/bin/sh
# git credential helper (get only): see clone.sh.
[ "$1" = get ] || exit 0
protocol="" host="" request=""
while IFS= read -r line && [ -n "$line" ]; do
  request="$request$line
"
  case $line in
    protocol=*) protocol=${line#protocol=} ;;
    host=*) host=$(printf '%s' "${line#host=}" | tr '[:upper:]' '[:lower:]') ;;
  esac
done
[ "$protocol" = https ] || exit 0
if [ -n "$SYKLI_CRED_TOKEN" ] && [ "$host" = "$SYKLI_CRED_HOST" ]; then
  user=${SYKLI_GIT_TOKEN_USERNAME:-}
  if [ -r "$SYKLI_GIT_ACCESS/token/username" ]; then
    user=$(cat "$SYKLI_GIT_ACCESS/token/username")
  fi
  token=$(cat "$SYKLI_GIT_ACCESS/token/token")
  printf 'username=%s\npassword=%s\n' "$user" "$token"
elif [ -n "$SYKLI_CRED_STORE" ]; then
  printf '%s\n' "$request" | git credential-store --file="$SYKLI_CRED_STORE" get
fi
EOF
  chmod 700 "$private/credential"
  add_config credential.helper "$private/credential"
fi

if [ -n "${SYKLI_GIT_LFS:-}" ]; then
  command -v git-lfs >/dev/null 2>&1 ||
    fail "the repository uses Git LFS but the init image has no git-lfs: set git_image to an image with it, or lfs: false"
  add_config filter.lfs.process "git-lfs filter-process"
  add_config filter.lfs.required true
  add_config filter.lfs.clean "git-lfs clean -- %f"
  add_config filter.lfs.smudge "git-lfs smudge -- %f"
  # Every LFS file the checkout writes gets its content: nothing the repository's .lfsconfig
  # or the image says may turn a download into a pointer left in place.
  add_config lfs.fetchinclude ""
  add_config lfs.fetchexclude ""
  add_config lfs.skipdownloaderrors false
  unset GIT_LFS_SKIP_SMUDGE GIT_LFS_SKIP_DOWNLOAD_ERRORS
fi

# After a failed checkout (output in $out): when a Git LFS download is why, fails naming the
# file, where it is ($1: the repository or a submodule) and git-lfs' reason.
lfs_download_failed() {
  grep -q 'smudge filter lfs failed' "$out" || return 0
  file=$(sed -n 's/^fatal: \(.*\): smudge filter lfs failed$/\1/p' "$out" | head -n 1)
  why=$(grep -e '^Error downloading object' -e 'Smudge error' "$out" | head -n 1 | sed 's/.*): //')
  fail "could not fetch the Git LFS content of $file ($1): ${why:-$(tail -n 3 "$out" | tr '\n' ' ')}"
}

tab=$(printf '\t')

# Prints the first file checked out in the repository at $1 that its attributes route
# through Git LFS and that holds an LFS pointer instead of the content, named as git quotes
# names (one line); nothing when there is none. A pointer is the commit's blob itself, of
# at most 1024 bytes: larger files are never read, and only candidates are hashed.
lfs_pointer_left() (
  cd "$1" || exit 1
  check=$private/lfs-check
  # Checked-out regular files (skip-worktree ones are outside the sparse cone): oid, path.
  git -c core.quotePath=false ls-files -s -t >"$check.ls" || exit 1
  awk -F "$tab" '$1 ~ /^H 100(644|755) / { split($1, f, " "); print f[3] FS $2 }' \
    "$check.ls" >"$check.index" || exit 1
  cut -f 2 "$check.index" | git -c core.quotePath=false check-attr --cached --stdin filter \
    >"$check.attr" || exit 1
  find . -name .git -prune -o -type f -size -1025c -print >"$check.small" || exit 1
  # Of those, the LFS ones small enough to be a pointer; a name git quotes (a control
  # character, say) is taken whatever its size, as find prints it otherwise.
  paste "$check.index" "$check.attr" >"$check.joined" || exit 1
  awk -F "$tab" 'FILENAME == ARGV[1] { small[substr($0, 3)] = 1; next }
    $3 ~ /: filter: lfs$/ && (substr($2, 1, 1) == "\"" || ($2 in small)) { print $1 FS $2 }' \
    "$check.small" "$check.joined" >"$check.lfs" || exit 1
  [ -s "$check.lfs" ] || exit 0
  cut -f 2 "$check.lfs" | git hash-object --no-filters --stdin-paths >"$check.raw" || exit 1
  paste "$check.lfs" "$check.raw" | awk -F "$tab" '$1 == $3 { print $1 FS $2 }' \
    >"$check.same" || exit 1
  while IFS="$tab" read -r oid path; do
    case $(git cat-file blob "$oid" | head -n 1) in
      "version https://git-lfs.github.com/spec/"* | "version https://hawser.github.com/spec/"*)
        printf '%s\n' "$path"
        exit 0
        ;;
    esac
  done <"$check.same"
)

# Fails naming the first LFS pointer left in the checkout of the repository at $1 ($2: how
# to name its files from the workspace).
lfs_verify() {
  left=$(lfs_pointer_left "$1") || fail "could not check the Git LFS files of ${2:-$SYKLI_GIT_URL}"
  [ -z "$left" ] || [ -z "${SYKLI_GIT_LFS:-}" ] ||
    fail "the checkout left a Git LFS pointer instead of the content of $2$left (is the pointer valid, and its object on the LFS server?)"
  [ -z "$left" ] ||
    fail "$2$left is a Git LFS pointer, not its content: ${2:-the repository }uses Git LFS where the machine that started the run could not see it (a submodule not checked out there); set lfs: true"
}

# The directories checked out (one per line; none: every file). With them, the fetch is a
# partial clone: no blob is downloaded but those the checkout writes.
sparse=${SYKLI_GIT_SPARSE:-}
filter=""
[ -z "$sparse" ] || filter=--filter=blob:none

# Prints the option of a partial clone, while the server may allow it.
filter_args() {
  [ -z "$filter" ] || printf '%s\n' "$filter"
}

# The directories of $1 (one per line) as one line: "a, b/c".
dirs_line() {
  printf '%s\n' "$1" | awk 'NR > 1 { printf ", " } { printf "%s", $0 }'
}

# Whether a directory of the cone, or one above it, is a symbolic link of the commit: a
# mount follows it, to a target the cone may not hold. Trees are all there, blobs or not.
cone_has_symlink() {
  printf '%s\n' "$sparse" >"$private/cone"
  while IFS= read -r dir; do
    prefix=""
    rest=$dir
    while [ -n "$rest" ]; do
      part=${rest%%/*}
      prefix=${prefix:+$prefix/}$part
      mode=$(git --literal-pathspecs ls-tree "$sha" -- "$prefix" | cut -c 1-6)
      [ "$mode" != 120000 ] || return 0
      [ "$rest" != "$part" ] || break
      rest=${rest#*/}
    done
  done <"$private/cone"
  return 1
}

mkdir -p "$ws"
cd "$ws"
git init -q .
# Only a URL, no default refspec: nothing is fetched but what is asked for. Setting it (not
# `remote add`) keeps a re-run of this container in the same pod working.
git config remote.origin.url "$SYKLI_GIT_URL"

log "fetching $sha from $SYKLI_GIT_URL (depth $SYKLI_GIT_DEPTH)"
[ -z "$sparse" ] || log "checking out only $(dirs_line "$sparse") (and the files at the top)"
rc=0
# shellcheck disable=SC2046
fetch $(depth_args) origin "$sha" || rc=$?
if [ "$rc" -eq 2 ]; then
  # The server serves only advertised refs: fetch the branch and deepen until the commit
  # is there (the branch may have moved past it).
  if [ -n "$ref" ]; then
    refspec="+refs/heads/$ref:refs/remotes/origin/$ref"
  else
    refspec="+refs/heads/*:refs/remotes/origin/*"
  fi
  log "the server does not serve commits by id; fetching ${ref:-all branches} instead"
  rc=0
  # shellcheck disable=SC2046
  fetch $(depth_args) origin "$refspec" || rc=$?
  step=$(( ${SYKLI_GIT_DEPTH#full} + 0 ))
  [ "$step" -gt 0 ] || step=1
  while [ "$rc" -eq 0 ] && ! has_commit; do
    if [ "$(git rev-parse --is-shallow-repository)" != true ]; then
      fail "commit $sha is not on ${ref:+branch $ref of }$SYKLI_GIT_URL: was it pushed?"
    fi
    step=$((step * 2))
    log "commit not in the last fetched history; deepening by $step"
    fetch --deepen="$step" origin "$refspec" || rc=$?
  done
fi
case $rc in
  0) ;;
  2) fail "commit $sha does not exist on $SYKLI_GIT_URL: was it pushed?" ;;
  3) fail "the server refused access to $SYKLI_GIT_URL: $(tail -n 3 "$out" | tr '\n' ' ')" ;;
  5) fail "the TLS certificate of $SYKLI_GIT_URL is not trusted (a private CA? set git_ca_bundle): $(grep -i -e certificate -e SSL "$out" | head -n 2 | tr '\n' ' ')" ;;
  4) fail "the ssh host key of the server does not match git_known_hosts (or it has none for it): $(grep -e 'Host key' -e 'IDENTIFICATION' -e 'key for' "$out" | head -n 3 | tr '\n' ' ')" ;;
  *) fail "could not fetch from $SYKLI_GIT_URL after $attempts attempts: $(tail -n 3 "$out" | tr '\n' ' ')" ;;
esac
has_commit || fail "commit $sha is not on $SYKLI_GIT_URL: was it pushed?"

if [ -n "$sparse" ] && [ -n "${SYKLI_GIT_SPARSE_WIDE:-}" ] && cone_has_symlink; then
  # The blobs the wider checkout writes come in one batch, as the others.
  sparse=$SYKLI_GIT_SPARSE_WIDE
  wide="every file"
  if [ "$sparse" = . ]; then
    sparse=""
  else
    wide=$(dirs_line "$sparse")
  fi
  log "a mounted directory is reached through a symbolic link: checking out $wide instead"
fi
if [ -n "$sparse" ]; then
  # Only these directories (and the files at the top) are checked out; with the blob
  # filter, nothing outside them is ever downloaded.
  printf '%s\n' "$sparse" | git sparse-checkout set --cone --stdin
fi
# With LFS, the smudge filter fetches the content of exactly the files checked out (in one
# batch): in a partial clone git-lfs' own scan of the tree (git lfs pull) would need every
# blob outside the cone, and it leaves pointers when one is missing.
[ -z "${SYKLI_GIT_LFS:-}" ] || log "checking out, fetching Git LFS content"
if ! git -c advice.detachedHead=false checkout -q --detach "$sha" -- >"$out" 2>&1; then
  cat "$out" >&2
  lfs_download_failed "$SYKLI_GIT_URL"
  fail "could not check out $sha: $(tail -n 3 "$out" | tr '\n' ' ')"
fi
cat "$out" >&2
head=$(git rev-parse HEAD)
[ "$head" = "$sha" ] || fail "checked out $head, expected $sha"

submodules=${SYKLI_GIT_SUBMODULES:-off}
if [ "$submodules" != off ] && [ -f .gitmodules ]; then
  recursive=""
  [ "$submodules" != recursive ] || recursive=--recursive
  sub_depth=""
  [ "${SYKLI_GIT_SUBMODULE_DEPTH:-1}" = full ] || sub_depth="--depth=${SYKLI_GIT_SUBMODULE_DEPTH:-1}"
  log "updating submodules${recursive:+ recursively}"
  # Relative URLs resolve against the parent's remote; credentials and host keys are the
  # parent's (they are in the environment). Both words are validated before the manifest
  # is built, so the unquoted expansions yield one word each at most.
  # shellcheck disable=SC2086
  git submodule sync -q $recursive
  # Sparse: only the submodules inside the cone (git would check out the others too), as
  # submodule.active pathspecs of this repository alone: each directory, and what is
  # directly in the top and in its parents.
  if [ -n "$sparse" ]; then
    git config --unset-all submodule.active || true
    git config --add submodule.active ":(glob)*"
    printf '%s\n' "$sparse" >"$private/sparse"
    while IFS= read -r dir; do
      [ -n "$dir" ] || continue
      git config --add submodule.active ":(literal)$dir"
      parent=$dir
      while [ "${parent%/*}" != "$parent" ]; do
        parent=${parent%/*}
        git config --add submodule.active ":(glob)$(printf '%s' "$parent" | sed 's/[][*?\\]/\\&/g')/*"
      done
    done <"$private/sparse"
  fi
  # shellcheck disable=SC2086
  if ! git submodule update --init $recursive $sub_depth --jobs 4 >"$out" 2>&1; then
    cat "$out" >&2
    lfs_download_failed "submodule $(sed -n "s/^fatal: Unable to checkout '.*' in submodule path '\(.*\)'\$/\1/p" "$out" | head -n 1)"
    fail "could not fetch the submodules of $SYKLI_GIT_URL (see the log above)"
  fi
  cat "$out" >&2
fi

if [ -n "${SYKLI_GIT_LFS:-}" ] || [ -n "${SYKLI_GIT_LFS_CHECK:-}" ]; then
  log "checking that no Git LFS pointer is left"
  lfs_verify . ""
  if [ "$submodules" != off ] && [ -f .gitmodules ]; then
    # shellcheck disable=SC2016 # a constant command for git to run in each submodule
    git submodule foreach -q --recursive 'printf "%s\n" "$displaypath"' >"$private/submodules" ||
      fail "could not list the submodules of $SYKLI_GIT_URL"
    while IFS= read -r sub; do
      lfs_verify "$sub" "$sub/"
    done <"$private/submodules"
  fi
fi
printf '%s\n' "$head" >"$msg_file" 2>/dev/null || true
log "checked out $head"
