# The demo set extended with the generated benchmark set: what
# `strata bench layering` and its regression test pull images from.
#
# `default.nix` brings what Nixery's `shell` bundle needs (bashInteractive,
# coreutils, cacert, ...) and a few programs (git, hello, jq); `generated.nix`
# brings about 300 packages of realistic sizes with deep shared
# dependencies. Where both define a name (glibc, zlib, openssl, curl, gmp,
# libxml2), the generated package wins at the top level: it has the
# realistic size and is what `bump` bumps. The demo packages keep their own dependencies, as two
# generations of a distribution living side by side would.
#
# The arguments are generated.nix's (`scale`, `bump`, `bumpLib`, `libs`,
# `apps`); a release of the set with zlib bumped is
#   import ./with-generated.nix { bump = 1; }
{ system ? builtins.currentSystem
, busyboxDir ? /usr/bin
, ...
}@args:

import ./default.nix { inherit system busyboxDir; }
// import ./generated.nix (args // { inherit system busyboxDir; })
