#!/usr/bin/env bash
# Run the shallot_udp test child under valgrind memcheck.
#
#   bash test/native/udp_valgrind.sh        (after: node-gyp rebuild && tsc)
#
# The child is dist/test/unit/udp-native.test.js run with SHUDP_CHILD=1: two
# UdpTransports on the loopback (and ::1 if present) exchanging batches,
# GSO, staged sends, oversize datagrams, bind errors, a throwing receiver,
# stop and close from inside the callback, a detached buffer. No privileges
# needed. Node runs with --jitless so that memcheck sees no JIT code. Fails
# if valgrind reports any error or definite leak, or if a step of the child
# fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
child="$root/dist/test/unit/udp-native.test.js"
addon="$root/build/Release/shallot_udp.node"
for f in "$child" "$addon"; do
  [[ -f "$f" ]] || { echo "missing $f: build first (node-gyp rebuild && tsc -p tsconfig.json)" >&2; exit 2; }
done
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }

node_bin="$(command -v node)"
logdir="$(mktemp -d /tmp/shudp-valgrind.XXXXXX)"
out="$logdir/child.out"
err="$logdir/child.valgrind"
echo "== loopback child (logs: $out, $err)"

status=0
rc=0
env -u NODE_TEST_CONTEXT -u NODE_OPTIONS SHUDP_CHILD=1 SHUDP_TIME_SCALE=10 \
  timeout 900 valgrind --error-exitcode=99 --leak-check=full \
  --show-leak-kinds=definite --errors-for-leak-kinds=definite \
  "$node_bin" --jitless "$child" >"$out" 2>"$err" || rc=$?
grep -E 'ERROR SUMMARY|definitely lost' "$err" || true
if [[ $rc != 0 ]]; then
  echo "FAIL: the child exited $rc (99 = valgrind found errors)"
  status=1
fi
result="$(grep '^SHUDP_RESULT ' "$out" | head -n1 || true)"
if [[ -z "$result" ]]; then
  echo "FAIL: the child printed no result"
  status=1
elif ! node -e '
  const steps = JSON.parse(process.argv[1].slice("SHUDP_RESULT ".length));
  let bad = 0;
  for (const s of steps) {
    console.log(`${s.ok ? "ok  " : "FAIL"} ${s.name}`);
    if (!s.ok) { bad++; console.log(s.error); }
  }
  process.exit(bad ? 1 : 0);
' "$result"; then
  status=1
fi

if [[ $status == 0 ]]; then
  rm -rf "$logdir"
  echo "valgrind: clean"
else
  echo "valgrind: FAILED (logs kept in $logdir)"
fi
exit $status
