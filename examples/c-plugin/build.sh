#!/bin/sh
# Builds largest_alone.wasm with Debian's clang and lld (apt-get install
# clang lld): no Rust, no libc, no Strata checkout beyond strata_plugin.h.
#   STRATA_SDK_C=/path/to/plugin-sdk/c ./build.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
sdk=${STRATA_SDK_C:-$here/../../plugin-sdk/c}
${CC:-clang} --target=wasm32 -O2 -mbulk-memory -nostdlib -Wall -Wextra -Werror \
    -Wl,--no-entry -I "$sdk" -o "$here/largest_alone.wasm" "$here/largest_alone.c"
echo "$here/largest_alone.wasm"
