#!/usr/bin/env bash
# Runs what `cargo test --workspace --release` runs (every test binary of the
# workspace, then the doc tests), several binaries at a time, each as cargo
# would: from its package's directory, with cargo's run-time variables.
#
#   bash scripts/test-binaries.sh LOG_DIR
#
# Why not `cargo test` itself: it runs one binary after another, and most of
# the end-to-end binaries spend their time waiting (on a Nix build that
# sleeps, a lease that must expire, a daemon starting), so on a 2-core CI
# machine three lanes take well under half the time. The binaries can share
# the machine: every server picks its own free port, every daemon (dockerd,
# containerd, podman's storage) gets its own directories and socket, and the
# fixture builds a test waits for are marked with that test's own nonce.
#
# STRATA_TEST_LANES binaries run at once (default 3). The slowest binaries
# start first (the order below is from docs/testing.md's timing table), so the
# short ones fill the lanes around them. Each binary's output is printed
# whole when it ends (never interleaved); LOG_DIR/times lists
# "seconds<TAB>exit status<TAB>binary", slowest first. Exits non-zero when
# any binary failed, after all have run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: test-binaries.sh LOG_DIR}
lanes=${STRATA_TEST_LANES:-3}
case $lanes in '' | *[!0-9]* | 0) echo "test-binaries.sh: STRATA_TEST_LANES must be a whole number from 1, not '$lanes'" >&2; exit 2 ;; esac
mkdir -p "$out"
out=$(cd "$out" && pwd)
: >"$out/results"

# The test binaries cargo built (`--no-run` builds whatever is missing):
# "package<TAB>target<TAB>package directory<TAB>executable" per binary, the
# target being an integration test's name, or lib:NAME / bin:NAME for unit
# tests.
cargo test --workspace --release --no-run --message-format=json-render-diagnostics \
  | jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
           | [(.package_id | if test("#[^@]+@") then capture("#(?<n>[^@]+)@").n
                               else split("#")[0] | split("/")[-1] end),
              (if .target.kind[0] == "test" then .target.name else "\(.target.kind[0]):\(.target.name)" end),
              (.manifest_path | rtrimstr("/Cargo.toml")), .executable] | @tsv' \
  >"$out/binaries"

# Measured slowest first (docs/testing.md); anything not named runs after these.
slow_first=(faults custom_plugin storage nix_gc scale_out limits browser layering docker sbom caching)
{
  for name in "${slow_first[@]}"; do awk -F'\t' -v n="$name" '$2 == n' "$out/binaries"; done
  awk -F'\t' 'NR == FNR { skip[$0] = 1; next } !($2 in skip)' <(printf '%s\n' "${slow_first[@]}") "$out/binaries"
} >"$out/queue"
if [ ! -s "$out/queue" ]; then
  echo "test-binaries.sh: cargo reported no test binaries (see $out/binaries)" >&2
  exit 1
fi

# Runs COMMAND... with its output kept apart in LOG, records its seconds
# and exit status under LABEL, then prints the log whole under a lock.
timed() {
  local label=$1 log=$2 t0 t1 secs status=0
  shift 2
  t0=$(date +%s%N)
  "$@" >"$log" 2>&1 </dev/null || status=$?
  t1=$(date +%s%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  printf '%s\t%s\t%s\n' "$secs" "$status" "$label" >>"$out/results"
  { flock 9; printf '\n     Running %s (%ss, exit %s)\n' "$label" "$secs" "$status"; cat "$log"; } 9>"$out/print.lock"
}

# One test binary, from its package directory as cargo test runs it.
run_binary() {
  local package=$1 dir=$2 exe=$3
  (cd "$dir" && CARGO_MANIFEST_DIR="$dir" CARGO_PKG_NAME="$package" CARGO="$(command -v cargo)" "$exe")
}

wait_for_lane() {
  while [ "$(jobs -rp | wc -l)" -ge "$lanes" ]; do wait -n || true; done
}

while IFS=$'\t' read -r package target dir exe; do
  wait_for_lane
  timed "$package/$target" "$out/$package.$target.log" run_binary "$package" "$dir" "$exe" &
done <"$out/queue"
wait_for_lane
# The doc tests are one more job in the queue (cargo runs them itself).
timed "doc tests" "$out/doc-tests.log" cargo test --workspace --release --doc &
wait

sort -t$'\t' -k1,1 -rn "$out/results" >"$out/times"
expected=$(( $(wc -l <"$out/queue") + 1 ))
ran=$(wc -l <"$out/times")
if [ "$ran" -ne "$expected" ]; then
  echo "test-binaries.sh: $ran of $expected test binaries reported back" >&2
  exit 1
fi
! awk -F'\t' '$2 != 0 { bad = 1 } END { exit !bad }' "$out/times"
