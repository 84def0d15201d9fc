# Sourced by test.sh and demo.sh: puts rustup's toolchain first on PATH
# (Debian's cargo-web in /usr/bin, installed for the wasm build, is too old
# for the workspace) and stops with a clear message when there is none.
if [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
  echo "$(basename "$0"): rustup's cargo was not found (looked in ${CARGO_HOME:-$HOME/.cargo}/bin and PATH)." >&2
  echo "$(basename "$0"): install the Rust toolchain with rustup (https://rustup.rs), then rerun." >&2
  exit 1
fi
