# Sourced by test.sh, fuzz.sh, install-deps.sh and demo.sh: puts rustup's
# toolchain first on PATH and stops with a clear message when there is none.
# The tests need rustup's (its wasm32 target and rust-lld build plugins,
# scripts/build-plugins.sh). The demo only builds the server, so a script
# that sets rust_env_any=1 before sourcing this also takes the cargo on PATH,
# such as Debian's cargo-web (install-deps.sh --demo installs it when rustup
# is missing).
if [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
if command -v cargo >/dev/null && command -v rustup >/dev/null; then
  :
elif [ "${rust_env_any:-0}" = 1 ] && command -v cargo >/dev/null; then
  echo "$(basename "$0"): no rustup toolchain; building with $(cargo --version) at $(command -v cargo)"
else
  echo "$(basename "$0"): rustup's cargo was not found (looked in ${CARGO_HOME:-$HOME/.cargo}/bin and PATH)." >&2
  echo "$(basename "$0"): install the Rust toolchain with rustup (https://rustup.rs), then rerun." >&2
  exit 1
fi
