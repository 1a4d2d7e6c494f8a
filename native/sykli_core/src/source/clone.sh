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
set -eu
umask 0000 # the task container may run as any uid: it must be able to write the tree

ws=$SYKLI_WORKSPACE
sha=$SYKLI_GIT_SHA
ref=${SYKLI_GIT_REF:-}
attempts=${SYKLI_CLONE_ATTEMPTS:-5}
backoff=${SYKLI_CLONE_BACKOFF:-2}
out=${TMPDIR:-/tmp}/sykli-clone.$$
msg_file=/dev/termination-log

log() { printf 'sykli-clone: %s\n' "$*" >&2; }
fail() {
  log "error: $*"
  printf '%s\n' "$*" >"$msg_file" 2>/dev/null || true
  exit 1
}

# Prints the depth option (nothing for full history). The depth is validated as digits
# before the manifest is built, so the unquoted expansion below yields one word at most.
depth_args() {
  [ "$SYKLI_GIT_DEPTH" = full ] || printf '%s\n' "--depth=$SYKLI_GIT_DEPTH"
}

# Runs one git fetch, output kept in $out. Classifies a failure: 2 when the server refuses
# to serve the commit by id (use the branch fallback), 3 when retrying cannot help
# (authentication, missing repository), 1 otherwise (transient: retry).
fetch_once() {
  if git fetch --no-tags --progress "$@" >"$out" 2>&1; then
    cat "$out" >&2
    return 0
  fi
  cat "$out" >&2
  if grep -q -e 'not our ref' -e 'unadvertised object' -e "couldn't find remote ref" -e 'no such remote ref' "$out"; then
    return 2
  fi
  if grep -q -i -e 'authentication failed' -e 'could not read username' -e 'permission denied' \
    -e 'repository not found' -e 'does not appear to be a git repository' -e 'host key verification failed' \
    -e 'returned error: 40[134]' -e 'not found' "$out"; then
    return 3
  fi
  return 1
}

# fetch_once with exponential backoff and jitter on transient failures.
fetch() {
  n=1
  delay=$backoff
  while :; do
    rc=0
    fetch_once "$@" || rc=$?
    [ "$rc" -eq 1 ] || return "$rc"
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

mkdir -p "$ws"
cd "$ws"
git init -q .
# Only a URL, no default refspec: nothing is fetched but what is asked for. Setting it (not
# `remote add`) keeps a re-run of this container in the same pod working.
git config remote.origin.url "$SYKLI_GIT_URL"

log "fetching $sha from $SYKLI_GIT_URL (depth $SYKLI_GIT_DEPTH)"
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
  *) fail "could not fetch from $SYKLI_GIT_URL after $attempts attempts: $(tail -n 3 "$out" | tr '\n' ' ')" ;;
esac
has_commit || fail "commit $sha is not on $SYKLI_GIT_URL: was it pushed?"

git -c advice.detachedHead=false checkout -q --detach "$sha" --
head=$(git rev-parse HEAD)
[ "$head" = "$sha" ] || fail "checked out $head, expected $sha"
rm -f "$out"
printf '%s\n' "$head" >"$msg_file" 2>/dev/null || true
log "checked out $head"
