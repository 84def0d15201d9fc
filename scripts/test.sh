#!/usr/bin/env bash
# THE test command: installs what the tests need, builds Strata, runs every
# test of the workspace (unit, plugin, host and end-to-end tests against real
# registry clients: what `cargo test --workspace --release` runs, three test
# binaries at a time, scripts/test-binaries.sh), then the fuzz targets under
# libFuzzer for STRATA_LIBFUZZER_SECS (default 30) each (scripts/fuzz.sh).
# The OCI conformance suite is built (cached, scripts/conformance.sh) before
# the tests, one of which runs it against a server.
# Fails on any failure or fuzz finding. Ends with where the time went.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
t0=$(date +%s)
bash scripts/install-deps.sh
deps_secs=$(( $(date +%s) - t0 ))

. scripts/rust-env.sh
echo "using $(cargo --version) at $(command -v cargo)"

# No binary cache is reachable offline: Nix must not wait on one.
export STRATA_NIX_OFFLINE=1
export NIX_CONFIG='substituters ='

step "build (cargo build --release, then the test binaries)"
t0=$(date +%s)
cargo build --release
build_secs=$(( $(date +%s) - t0 ))
t0=$(date +%s)
cargo test --workspace --release --no-run
test_build_secs=$(( $(date +%s) - t0 ))

step "OCI conformance suite (scripts/conformance.sh: built once per change; run by tests/oci_conformance.rs)"
t0=$(date +%s)
bash scripts/conformance.sh >/dev/null
conformance_secs=$(( $(date +%s) - t0 ))

step "tests (every test binary of cargo test --workspace --release, ${STRATA_TEST_LANES:-3} at a time)"
runs=$(mktemp -d)
log="$runs/all.log"
trap 'rm -rf "$runs"' EXIT
t0=$(date +%s)
set +e
# The e2e harness would otherwise rebuild the server once per test binary:
# it was built just above.
STRATA_E2E_NO_BUILD=1 bash scripts/test-binaries.sh "$runs" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
test_secs=$(( $(date +%s) - t0 ))

step "fuzz (scripts/fuzz.sh: cargo fuzz, ${STRATA_LIBFUZZER_SECS:-30}s per target)"
fuzz_log="$runs/fuzz.log"
t0=$(date +%s)
set +e
bash scripts/fuzz.sh 2>&1 | tee "$fuzz_log"
fuzz_status=${PIPESTATUS[0]}
set -e
fuzz_secs=$(( $(date +%s) - t0 ))

passed=0 failed=0 ignored=0
while read -r p f i; do
  passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log")

echo
echo "==> summary"
echo "dependencies: ${deps_secs}s; build: ${build_secs}s; test binaries: ${test_build_secs}s; conformance suite build: ${conformance_secs}s; tests: ${test_secs}s; fuzz: ${fuzz_secs}s; total: $(( $(date +%s) - started ))s"
echo "seconds per test binary (exit status), slowest first:"
if [ -f "$runs/times" ]; then awk -F'\t' '{ printf "  %7ss  %s (%s)\n", $1, $3, $2 }' "$runs/times"; fi
grep '^fuzz: ' "$fuzz_log" || true
echo "tests: ${passed} passed, ${failed} failed, ${ignored} ignored"
if [ "$status" -ne 0 ]; then
  grep -E '^test .* FAILED$|^error(\[|:)' "$log" | sort -u | sed 's/^/  /' || true
  if [ -f "$runs/times" ]; then awk -F'\t' '$2 != 0 { print "  failed: " $3 }' "$runs/times"; fi
  echo "FAILED (scripts/test-binaries.sh exited with $status)"
  exit "$status"
fi
if [ "$fuzz_status" -ne 0 ]; then
  echo "FAILED (scripts/fuzz.sh exited with $fuzz_status: a fuzz target found a crash, or did not build)"
  exit "$fuzz_status"
fi
echo "OK"
