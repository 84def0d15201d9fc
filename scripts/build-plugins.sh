#!/usr/bin/env bash
# Builds Strata's built-in plugins to WebAssembly, or the plugin crates
# given as arguments (and nothing else).
#
#   scripts/build-plugins.sh                          # plugins/dist/*.wasm
#   scripts/build-plugins.sh examples/custom-plugin   # only <dir>/<lib>.wasm
#   scripts/build-plugins.sh --builtins DIR           # both
#
# Built-ins land in plugins/dist/<dir name>.wasm (committed: the host embeds
# them). A crate named as an argument lands in its own directory as
# <lib name>.wasm, e.g. examples/custom-plugin/one_layer_per_package.wasm;
# it must define a `plugin` profile (see that crate's Cargo.toml). It may
# be anywhere: only the toolchain and the target directory come from here.
# (`--no-builtins`, once needed to keep the built-ins, is still accepted.)
#
# Toolchain: a rustup toolchain with the wasm32-unknown-unknown target
# (`rustup target add wasm32-unknown-unknown`) is used when present.
# Otherwise Debian's rustc-web/rust-web-src/cargo-web (/usr/bin/cargo and
# /usr/bin/rustc) build std from source (-Zbuild-std), linked with rustup's
# rust-lld. Both share one target directory, target-wasm/, so std is built
# once. Set STRATA_WASM_TOOLCHAIN=rustup|build-std to choose, and
# STRATA_WASM_TARGET_DIR for another target directory.
#
# Output is reproducible: the same sources and toolchain give the same
# bytes, wherever the checkout, target directory and cargo home are (paths
# are remapped). A crate with a path dependency outside its own workspace
# (the example's SDK) is reproducible only at the same location: cargo
# hashes such a dependency's absolute path into symbol names.
set -euo pipefail

# Built-ins only when no crate is named, unless asked for.
builtins_too=$(($# == 0))
case ${1:-} in
--builtins)
    builtins_too=1
    shift
    ;;
--no-builtins)
    builtins_too=0
    shift
    ;;
esac

caller=$(pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

target=wasm32-unknown-unknown
profile=plugin
builtins=(bundles popularity size nixpkgs-source)
export CARGO_TARGET_DIR=${STRATA_WASM_TARGET_DIR:-$root/target-wasm}
mkdir -p "$CARGO_TARGET_DIR"
CARGO_TARGET_DIR=$(cd "$CARGO_TARGET_DIR" && pwd)
cargo_home=${CARGO_HOME:-$HOME/.cargo}

# Paths compiled into panic messages must not depend on this machine. The
# last matching prefix wins, so the target directory (build scripts'
# generated sources) is named /target even inside the checkout.
rustflags="--remap-path-prefix=$root=/strata --remap-path-prefix=$cargo_home=/cargo"
rustflags="$rustflags --remap-path-prefix=$CARGO_TARGET_DIR=/target"

have_rustup_target() {
    command -v rustup >/dev/null 2>&1 &&
        rustup target list --installed 2>/dev/null | grep -qx "$target"
}

mode=${STRATA_WASM_TOOLCHAIN:-}
if [[ -z $mode ]]; then
    if have_rustup_target; then
        mode=rustup
    elif [[ -x /usr/bin/cargo && -x /usr/bin/rustc && -d /usr/lib/rustlib/src/rust/library ]]; then
        mode=build-std
    else
        echo "error: no toolchain for $target." >&2
        echo "  rustup target add $target     (or, on Debian: apt-get install rustc-web rust-web-src cargo-web)" >&2
        exit 1
    fi
fi

cargo_build=()
case $mode in
rustup)
    cargo_build=(cargo build)
    ;;
build-std)
    # rust-lld ships with rustup's toolchain, not with Debian's rustc-web.
    host=$(rustc -vV | sed -n 's/^host: //p')
    lld="$(rustc --print sysroot)/lib/rustlib/$host/bin/rust-lld"
    if [[ ! -x $lld ]]; then
        echo "error: rust-lld not found at $lld (needs a rustup toolchain for linking)" >&2
        exit 1
    fi
    export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=$lld
    cargo_build=(/usr/bin/cargo build -Zbuild-std=std,panic_abort)
    ;;
*)
    echo "error: STRATA_WASM_TOOLCHAIN must be rustup or build-std, not $mode" >&2
    exit 1
    ;;
esac

# The crate's library name, as cargo names the artifact.
lib_name() {
    local manifest=$1
    awk '
        /^\[/ { section = $0 }
        /^name[ \t]*=/ {
            gsub(/^name[ \t]*=[ \t]*"|".*$/, "")
            if (section == "[lib]") lib = $0
            else if (section == "[package]") pkg = $0
        }
        END { name = lib != "" ? lib : pkg; gsub(/-/, "_", name); print name }
    ' "$manifest"
}

out_dir="$CARGO_TARGET_DIR/$target/$profile"
report=()
start=$(date +%s)

if ((builtins_too)); then
    echo "building built-in plugins ($mode)" >&2
    packages=()
    for p in "${builtins[@]}"; do
        packages+=(-p "strata-plugin-$p")
    done
    RUSTFLAGS="$rustflags" "${cargo_build[@]}" --target "$target" --profile "$profile" "${packages[@]}"
    mkdir -p plugins/dist
    for p in "${builtins[@]}"; do
        src="$out_dir/$(lib_name "plugins/$p/Cargo.toml").wasm"
        cp "$src" "plugins/dist/$p.wasm"
        report+=("$root/plugins/dist/$p.wasm")
    done
fi

for dir in "$@"; do
    dir=${dir%/}
    # Relative to where the script was called from, not the checkout.
    [[ $dir == /* ]] || dir=$caller/$dir
    if [[ ! -f $dir/Cargo.toml ]]; then
        echo "error: $dir/Cargo.toml not found" >&2
        exit 1
    fi
    abs=$(cd "$dir" && pwd)
    flags=$rustflags
    # A crate outside the checkout needs its own remapping (and so, once,
    # its own build of std).
    [[ $abs == "$root"/* ]] || flags="$flags --remap-path-prefix=$abs=/plugin"
    echo "building $dir" >&2
    RUSTFLAGS="$flags" "${cargo_build[@]}" --target "$target" --profile "$profile" \
        --manifest-path "$abs/Cargo.toml"
    name=$(lib_name "$abs/Cargo.toml")
    cp "$out_dir/$name.wasm" "$dir/$name.wasm"
    report+=("$dir/$name.wasm")
done

echo "built in $(($(date +%s) - start)) s:" >&2
for f in "${report[@]}"; do
    printf '%8d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "${f#"$caller"/}"
done
