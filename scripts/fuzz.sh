#!/usr/bin/env bash
# Runs each cargo-fuzz target of fuzz/ under libFuzzer for a bounded time:
# coverage-guided, starting from the tracked seeds (fuzz/seeds/<target>/)
# and the local corpus (fuzz/corpus/<target>/, git-ignored, grows from run
# to run). Exits non-zero when a target finds a crash: a validator that
# panics, or one whose verdict the checks of fuzz/src/lib.rs contradict; the
# input is kept in fuzz/artifacts/<target>/ and the lines printed say how to
# replay it.
#
#   bash scripts/fuzz.sh                    # what CI runs (scripts/test.sh): 30 s each
#   bash scripts/fuzz.sh 600                # longer, by hand
#   bash scripts/fuzz.sh 600 plugin_output  # one target
#
# The time per target is the first argument, else STRATA_LIBFUZZER_SECS,
# else 30. Needs cargo-fuzz and a C++ compiler (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/rust-env.sh

secs=${1:-${STRATA_LIBFUZZER_SECS:-30}}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(reference plugin_output)
# (libFuzzer reads a time of 0 as no limit at all.)
case $secs in '' | *[!0-9]* | 0) echo "fuzz.sh: seconds must be a whole number from 1, not '$secs'" >&2; exit 2 ;; esac

# cargo-fuzz passes nightly-only flags to rustc (sanitizer coverage);
# RUSTC_BOOTSTRAP lets the stable toolchain accept them. No sanitizer: the
# code under test is safe Rust, and AddressSanitizer needs a nightly std.
export RUSTC_BOOTSTRAP=1

# The instrumented build lives outside the checkout, in a cache keyed by
# what goes into it: the fuzz crate, the two crates it links, its lock file
# and the toolchain. Built once per change of those sources; a fresh clone
# of an unchanged tree (what CI makes every run) reuses it, and a changed
# one rebuilds only what changed (the dependencies, libFuzzer's C++ among
# them, stay built). STRATA_FUZZ_CACHE moves the cache.
cache=${STRATA_FUZZ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/strata/fuzz}
mkdir -p "$cache"
sources=(fuzz/Cargo.toml fuzz/Cargo.lock fuzz/src fuzz/fuzz_targets host/reference plugin-sdk)
toolchain=$(rustc -vV)
sources_key() {
  {
    echo "$toolchain"
    cargo fuzz --version
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ -z "$(git status --porcelain -- "${sources[@]}")" ]; then
      # Committed and clean: git's blob ids name the contents.
      git ls-files -s -- "${sources[@]}"
    else
      find "${sources[@]}" -type f -not -path '*/target/*' -print0 | sort -z | xargs -0 sha256sum
    fi
  } | sha256sum | cut -c1-16
}
key=$(sources_key)
bin_dir="$cache/target/$(sed -n 's/^host: //p' <<<"$toolchain")/release"
cd fuzz

built() {
  [ -f "$cache/built-$key" ] || return 1
  for t in "${targets[@]}"; do [ -x "$bin_dir/$t" ] || return 1; done
}

t0=$(date +%s)
if built; then
  echo "fuzz: build skipped (sources unchanged since the build in $cache, key $key)"
else
  cargo fuzz build --sanitizer none --target-dir "$cache/target"
  rm -f "$cache"/built-*
  touch "$cache/built-$key"
  echo "fuzz: build $(( $(date +%s) - t0 ))s"
fi

# The targets run side by side (libFuzzer uses one core each), each from the
# binary just built or found, with the arguments `cargo fuzz run` would give.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  # New inputs go to the first directory, so the tracked seeds stay as they
  # are. An input that takes over 10 s is a finding too (a hang), instead of
  # stalling the run for libFuzzer's default 20 min.
  ( "$bin_dir/$t" -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" \
      -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$logs/$t" 2>&1
    echo $? >"$logs/$t.status" ) &
done
wait

status=0
for t in "${targets[@]}"; do
  log="$logs/$t"
  if [ "$(cat "$log.status")" = 0 ]; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    last=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | sed -E 's/^#[0-9]+[[:space:]]+DONE[[:space:]]+//')
    echo "fuzz: $t: ${runs:-?} inputs in ${secs}s, no crash ($last)"
  else
    status=1
    # From the panic (or libFuzzer's error) on: the message, the input and
    # the command that replays it.
    found=$(awk 'f || /panicked at|ERROR: libFuzzer/ { f = 1 } f' "$log" | head -n 200)
    if [ -n "$found" ]; then echo "$found"; else tail -n 80 "$log"; fi
    echo "fuzz: $t: FAILED (the input is in fuzz/artifacts/$t/; replay: cd fuzz && $bin_dir/$t artifacts/$t/<file>)"
  fi
done
exit $status
