#!/bin/sh
# tests/config/run_case.sh: one bad (or good) config case.
#
#   run_case.sh CASE_DIR [GATEWAY]      (GATEWAY defaults to $GATEWAY)
#
# Runs `GATEWAY --check-config config.json` from inside CASE_DIR, so every
# FILE in the messages is relative to the case (config.json, keys.json).
# Compared with CASE_DIR/expected: stderr without warning lines (lines
# containing ": warning: "), followed by stdout (`ok` for a good config).
# The exit status must agree: 0 with `ok`, 1 otherwise.
#
# Environment for ${ENV} cases: RATEWALL_TEST_SECRET is set to "s3cret";
# RATEWALL_TEST_UNSET and RATEWALL_TEST_UNSET2 are always unset.
# Exit 0 on match; on mismatch print a diff (expected vs actual) and exit 1.
set -u
case_dir=${1:?usage: run_case.sh CASE_DIR [GATEWAY]}
gw=${2:-${GATEWAY:-}}
[ -n "$gw" ] || { echo "run_case.sh: no gateway binary (argument 2 or \$GATEWAY)" >&2; exit 2; }
case "$gw" in /*) ;; *) gw="$(pwd)/$gw" ;; esac
[ -x "$gw" ] || { echo "run_case.sh: $gw is not executable" >&2; exit 2; }
[ -f "$case_dir/expected" ] || { echo "run_case.sh: $case_dir/expected is missing" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rwcase.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM

RATEWALL_TEST_SECRET=s3cret
export RATEWALL_TEST_SECRET
unset RATEWALL_TEST_UNSET RATEWALL_TEST_UNSET2

(cd "$case_dir" && "$gw" --check-config config.json >"$tmp/out" 2>"$tmp/err")
rc=$?
{ grep -v ': warning: ' "$tmp/err"; cat "$tmp/out"; } >"$tmp/actual"

status=0
if ! diff -u "$case_dir/expected" "$tmp/actual" >"$tmp/diff"; then
    echo "FAIL $case_dir: --check-config output differs (- expected, + actual)"
    cat "$tmp/diff"
    status=1
fi
if [ "$(cat "$case_dir/expected")" = "ok" ]; then want=0; else want=1; fi
if [ "$rc" -ne "$want" ]; then
    echo "FAIL $case_dir: exit status $rc, expected $want"
    status=1
fi
[ $status -eq 0 ] && echo "PASS $case_dir"
exit $status
