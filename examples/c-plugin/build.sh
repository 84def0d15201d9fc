#!/bin/sh
# Builds largest_alone.wasm with Debian's clang and lld (apt-get install
# clang lld): no Rust, no libc, nothing but strata_plugin.h from Strata.
#
#   examples/c-plugin/build.sh [OUT.wasm]     # default: next to the source
#
# STRATA_SDK_C names the directory holding strata_plugin.h when this
# directory is copied out of the Strata checkout.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
sdk=${STRATA_SDK_C:-$here/../../plugin-sdk/c}
out=${1:-$here/largest_alone.wasm}
# --target=wasm32: wasm32-unknown-unknown, what the host runs.
# -mbulk-memory: memcpy/memset become single instructions.
# -nostdlib -Wl,--no-entry: no libc, no crt, no main; a library of exports.
${CC:-clang} --target=wasm32 -O2 -mbulk-memory -nostdlib -Wall -Wextra -Werror \
    -Wl,--no-entry -I "$sdk" -o "$out" "$here/largest_alone.c"
echo "$out"
