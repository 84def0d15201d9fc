#!/usr/bin/env bash
# Installs what Strata's commands need, and checks that Nix works for root.
#
#   install-deps.sh --demo   what scripts/demo.sh uses and nothing more: Nix,
#                            busybox, skopeo, umoci, curl, jq, and Rust (a C
#                            compiler and linker; Debian's Rust when there is
#                            no rustup toolchain). On a fresh Debian 12:
#                            114 MB, under a minute; 245 MB with Debian's
#                            Rust, under a minute and a half.
#   install-deps.sh          what scripts/test.sh needs: the demo's set plus
#                            Docker, podman, containerd, Chromium, the object
#                            store stand-ins (PyPI, npm, cargo install),
#                            cargo-fuzz, … 752 MB of Debian packages alone;
#                            about ten minutes in all on a fresh machine.
#
# Idempotent: when everything is installed it neither updates the package
# lists nor installs anything. Prints how long each part took.
set -euo pipefail

demo_only=0
case ${1:-} in
  --demo) demo_only=1 ;;
  '') ;;
  *) echo "usage: $(basename "$0") [--demo]" >&2; exit 2 ;;
esac

started=$(date +%s)
part_t0=$started
# Ends a part of the install: its name and seconds.
done_part() {
  local now
  now=$(date +%s)
  echo "install-deps: $1 took $((now - part_t0)) s"
  part_t0=$now
}

# rustup's toolchain is what the build prefers (scripts/rust-env.sh).
have_rustup() {
  [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ] || { command -v rustup && command -v cargo; } >/dev/null 2>&1
}

DEMO_PACKAGES=(
  # Nix (single-user, as root; nix-setup-systemd brings /etc/nix/nix.conf with
  # sandbox = false and the nixbld users) and the busybox the demo set is made of
  nix-bin nix-setup-systemd busybox-static
  # the demo pulls with skopeo and unpacks with umoci; curl asks the server,
  # jq reads what skopeo says of the image
  skopeo umoci curl jq
  # cargo build: crates.io over HTTPS, and a C compiler and linker (ring and
  # zstd-sys compile C; rustc links through cc)
  ca-certificates gcc libc6-dev
)
if ! have_rustup; then
  # No rustup toolchain: Debian's Rust builds Strata (bookworm-security's
  # rustc-web; scripts/rust-env.sh), with rust-lld from rust-web-llvm.
  DEMO_PACKAGES+=(rustc-web cargo-web rust-web-llvm)
fi

TEST_PACKAGES=(
  # systemd-analyze (tests/tests/service_unit.rs checks examples/strata.service;
  # systemd need not be running) and useradd (tests/tests/multi_user.rs)
  systemd passwd
  # registry clients the end-to-end tests drive beyond skopeo and umoci
  docker.io docker-registry
  # podman (with runc: crun fails on this machine's cgroups) and containerd's
  # own daemon and ctr, the other two clients the end-to-end tests drive
  podman runc containerd
  # Debian's Rust: builds plugins' std from source when rustup has no wasm32
  # target (scripts/build-plugins.sh); the build itself prefers rustup's cargo
  rustc-web rust-web-src cargo-web
  # the C++ compiler libfuzzer-sys builds libFuzzer with (cargo fuzz, fuzz/)
  g++
  # clang --target=wasm32 and its linker wasm-ld: the C plugin example
  # (examples/c-plugin, tests/tests/c_plugin.rs)
  clang lld
  # load testing and everyday tools the tests call
  wrk git python3 xxd coreutils tar gzip zstd procps
  # the peers `strata-bench perf` runs side by side: pigz (gzip on every
  # core) and nginx (static files with sendfile)
  pigz nginx-light
  # the browser test: Debian's headless Chromium driven from Node
  chromium nodejs
)

PACKAGES=("${DEMO_PACKAGES[@]}")
# The demo's set without Recommends, which bring LLVM's development files,
# image libraries and firewall tools that the demo never uses: on a fresh
# Debian 12 with Debian's Rust, 147 packages and 245 MB instead of 214 and
# 348 MB. Every package the demo needs is named above.
apt_options=(--no-install-recommends)
if [ "$demo_only" = 0 ]; then
  PACKAGES+=("${TEST_PACKAGES[@]}")
  apt_options=()
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ "$demo_only" = 0 ]; then
  # npm comes with nodesource's nodejs, and as its own package with Debian's:
  # only ask for Debian's when there is no npm at all.
  if ! command -v npm >/dev/null; then
    missing+=(npm)
  fi
  # The same for pip: this kind of machine brings a CPython with pip; a plain
  # Debian python3 has none.
  if ! python3 -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
  fi
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
else
  echo "install-deps: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: must run as root to install packages" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y "${apt_options[@]}" "${missing[@]}"
fi
done_part "Debian packages"

# The test command's tools from PyPI, npm and crates.io.
install_test_tools() {
  # Object-store stand-ins for tests/tests/{storage,scale_out}.rs (see
  # tests/src/stores.rs): S3 (moto's server; s3s-fs, which checks signatures),
  # Azure Blob (azurite, plus Microsoft's Python SDK to create its container)
  # and GCS (gcp-storage-emulator); for tests/tests/sbom.rs, spdx-tools
  # (pyspdxtools, the SPDX validator) and the oras SDK (reads the referrer).
  # Pinned; installed only when the pinned version is not already there.
  PIP_PINS=("moto[server]==5.2.1" "gcp-storage-emulator==2026.7.19" "azure-storage-blob==12.26.0"
            "spdx-tools==0.8.5" "oras==0.2.43")
  pip_missing=()
  for pin in "${PIP_PINS[@]}"; do
    name=${pin%%==*}; name=${name%%\[*}; want=${pin##*==}
    have=$(python3 -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
    [ "$have" = "$want" ] || pip_missing+=("$pin")
  done
  if [ ${#pip_missing[@]} -gt 0 ]; then
    echo "install-deps: pip installing ${pip_missing[*]}"
    # Debian's own python3 refuses system-wide installs unless told (PEP 668);
    # the flag is harmless to a Python that is not Debian's.
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet "${pip_missing[@]}"
  fi
  AZURITE_VERSION=3.35.0
  if [ "$(azurite-blob --version 2>/dev/null || true)" != "$AZURITE_VERSION" ]; then
    echo "install-deps: npm installing azurite@$AZURITE_VERSION"
    npm install --global --no-fund --no-audit "azurite@$AZURITE_VERSION"
  fi
  # rustup's cargo (what the tests build with) and where it installs; without
  # rustup, stop here with rust-env.sh's message rather than install with
  # another cargo.
  . "$(dirname "${BASH_SOURCE[0]}")/rust-env.sh"
  S3S_FS_VERSION=0.14.1 # 0.17 needs a newer rustc than this machine's
  if [ "$(s3s-fs --version 2>/dev/null || true)" != "s3s-fs $S3S_FS_VERSION" ]; then
    echo "install-deps: cargo installing s3s-fs@$S3S_FS_VERSION (a few minutes)"
    cargo install --locked --features binary "s3s-fs@$S3S_FS_VERSION"
  fi
  # The fuzz run of scripts/test.sh (fuzz/, docs/reliability.md).
  CARGO_FUZZ_VERSION=0.13.2 # builds with rustc 1.95 in about 40 s
  if [ "$(cargo-fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "install-deps: cargo installing cargo-fuzz@$CARGO_FUZZ_VERSION"
    cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
  fi
  for tool in moto_server gcp-storage-emulator azurite-blob s3s-fs cargo-fuzz; do
    command -v "$tool" >/dev/null || { echo "install-deps: $tool not on PATH after installing it" >&2; exit 1; }
  done
  done_part "PyPI, npm and cargo tools"
}
[ "$demo_only" = 1 ] || install_test_tools

# Nix: Debian's nix-bin is used by root as a single user, no daemon. The store
# and its database are created on first use; make sure that works.
if ! command -v nix-build >/dev/null; then
  echo "install-deps: nix-build not found after installing nix-bin" >&2
  exit 1
fi
mkdir -p /nix/store /nix/var/nix
# No binary cache is needed (or reachable offline): don't wait on one.
export NIX_CONFIG="${NIX_CONFIG:-}
substituters ="
if ! out=$(nix-build --no-out-link -E \
    'derivation { name = "strata-nix-check"; system = builtins.currentSystem;
                  builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ]; }' 2>&1); then
  echo "install-deps: Nix cannot build as $(id -un):" >&2
  echo "$out" >&2
  exit 1
fi
echo "install-deps: Nix $(nix-build --version | awk '{print $NF}') builds as $(id -un), store at /nix/store"
done_part "Nix check"
echo "install-deps: done in $(( $(date +%s) - started )) s"
