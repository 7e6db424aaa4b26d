#!/usr/bin/env bash
# Build dtls_core.c + the harness against the system libssl with ASan and
# UBSan (LeakSanitizer on) and run it; where LeakSanitizer cannot run (it
# needs ptrace-like access some sandboxes deny), fall back to valgrind for
# leaks. Exits non-zero on any failure or sanitizer report.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

src=("$root/src/native/dtls_core.c" "$here/dtls_harness.c")
flags=(-std=c11 -D_DEFAULT_SOURCE -DOPENSSL_API_COMPAT=30000 -Wall -Wextra -Wno-unused-parameter -Werror -g -O1)

gcc "${flags[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all \
  "${src[@]}" -o "$tmp/harness-asan" -lssl -lcrypto -lpthread

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=23
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
set +e
"$tmp/harness-asan" >"$tmp/asan.log" 2>&1
rc=$?
set -e
cat "$tmp/asan.log"

if grep -q 'LeakSanitizer has encountered a fatal error\|LeakSanitizer does not work' "$tmp/asan.log"; then
  echo "run-asan: LeakSanitizer unavailable here; rerunning without it, leaks checked by valgrind"
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:exitcode=23 "$tmp/harness-asan"
  if ! command -v valgrind >/dev/null; then
    echo "run-asan: valgrind not installed: leaks unchecked" >&2
    exit 1
  fi
  gcc "${flags[@]}" "${src[@]}" -o "$tmp/harness-plain" -lssl -lcrypto -lpthread
  valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
    --error-exitcode=1 "$tmp/harness-plain"
elif [ "$rc" -ne 0 ]; then
  echo "run-asan: harness failed (exit $rc)" >&2
  exit "$rc"
fi
echo "run-asan: ok"
