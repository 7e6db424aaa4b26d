#!/usr/bin/env bash
# Run the shallot_tun test children under valgrind memcheck.
#
#   bash test/native/tun_valgrind.sh        (after: node-gyp rebuild && tsc)
#
# The children are dist/test/unit/tun-native.test.js run with SHTUN_CHILD:
#   fifo   the reader machinery over a FIFO (no privileges needed)
#   netns  a real TUN inside a throwaway network namespace (root + iproute2;
#          skipped otherwise)
# Node runs with --jitless so that memcheck sees no JIT code. Fails if
# valgrind reports any error or definite leak, or if a step of a child fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
child="$root/dist/test/unit/tun-native.test.js"
addon="$root/build/Release/shallot_tun.node"
for f in "$child" "$addon"; do
  [[ -f "$f" ]] || { echo "missing $f: build first (node-gyp rebuild && tsc -p tsconfig.json)" >&2; exit 2; }
done
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }

node_bin="$(command -v node)"
logdir="$(mktemp -d /tmp/shtun-valgrind.XXXXXX)"
ns="shtun-vg-$$"
ns_made=0
cleanup() {
  if [[ $ns_made == 1 ]]; then ip netns del "$ns" 2>/dev/null || true; fi
}
trap cleanup EXIT

status=0
run_child() { # mode, then an optional command prefix
  local mode="$1"
  shift
  local out="$logdir/$mode.out" err="$logdir/$mode.valgrind"
  echo "== $mode (logs: $out, $err)"
  local rc=0
  env -u NODE_TEST_CONTEXT -u NODE_OPTIONS SHTUN_CHILD="$mode" SHTUN_TIME_SCALE=10 \
    timeout 900 "$@" valgrind --error-exitcode=99 --leak-check=full \
    --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    "$node_bin" --jitless "$child" >"$out" 2>"$err" || rc=$?
  grep -E 'ERROR SUMMARY|definitely lost' "$err" || true
  if [[ $rc != 0 ]]; then
    echo "FAIL: $mode exited $rc (99 = valgrind found errors)"
    status=1
  fi
  local result
  result="$(grep '^SHTUN_RESULT ' "$out" | head -n1 || true)"
  if [[ -z "$result" ]]; then
    echo "FAIL: $mode printed no result"
    status=1
    return
  fi
  if ! node -e '
    const steps = JSON.parse(process.argv[1].slice("SHTUN_RESULT ".length));
    let bad = 0;
    for (const s of steps) {
      console.log(`${s.ok ? "ok  " : "FAIL"} ${s.name}`);
      if (!s.ok) { bad++; console.log(s.error); }
    }
    process.exit(bad ? 1 : 0);
  ' "$result"; then
    status=1
  fi
}

run_child fifo

if [[ $(id -u) == 0 ]] && command -v ip >/dev/null && [[ -e /dev/net/tun ]] &&
  ip netns add "$ns" 2>/dev/null; then
  ns_made=1
  run_child netns ip netns exec "$ns"
else
  echo "== netns: skipped (needs root, iproute2, /dev/net/tun and network namespaces)"
fi

if [[ $status == 0 ]]; then
  rm -rf "$logdir"
  echo "valgrind: clean"
else
  echo "valgrind: FAILED (logs kept in $logdir)"
fi
exit $status
