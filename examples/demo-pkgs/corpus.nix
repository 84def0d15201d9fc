# A benchmark corpus of real files: each package copies a directory of this
# machine (ELF binaries and shared libraries, JavaScript, message catalogs,
# documentation), so that compression meets what real store paths hold
# rather than generated.nix's mix of text and random bytes.
#
# Each package names a list of candidate directories and copies the first
# one that exists (the list covers Debian's and other distributions'
# layouts); a package with no candidate present is left out of the set, so
# the set has whatever this machine offers. `strata-bench perf` prints the
# size it got. Builds need Nix's sandbox off (as Strata's tests run it): the
# builder reads outside the store.
#
#   NIX_CONFIG='substituters =' nix-build examples/demo-pkgs/corpus.nix -A all --no-out-link
#   nix-instantiate --eval -E 'builtins.attrNames (import ./examples/demo-pkgs/corpus.nix {})'
#
# Every package refers to `base` (a copy of the C library's files), and
# `all` to every package, so closures have real references. The copies are
# input-addressed by the candidate list, not by the files' contents: bump
# `epoch` to rebuild after the machine's files changed.
{ system ? builtins.currentSystem
, busyboxDir ? /usr/bin
, epoch ? 1
, ...
}:

let
  busyboxStore = builtins.path {
    name = "busybox-static";
    path = busyboxDir;
    filter = path: type: baseNameOf path == "busybox";
  };
  bb = "${busyboxStore}/busybox";

  # name -> candidate directories, first present wins.
  candidates = {
    chromium = [ "/usr/lib/chromium" "/usr/lib64/chromium" "/usr/lib/chromium-browser" ];
    llvm = [ "/usr/lib/llvm-14" "/usr/lib/llvm-15" "/usr/lib/llvm-16" "/usr/lib/llvm-19" "/usr/lib/llvm-22" "/usr/lib64/llvm" ];
    rustlib = [ "/usr/lib/rustlib" "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib" ];
    node-modules = [ "/usr/lib/node_modules" "/usr/share/nodejs" "/usr/local/lib/node_modules" ];
    locales = [ "/usr/share/locale" ];
    docs = [ "/usr/share/doc" ];
  };

  present = dirs: builtins.filter builtins.pathExists dirs;

  base = derivation {
    name = "corpus-base-${toString epoch}";
    inherit system;
    builder = bb;
    args = [ "sh" "-c" ''
      set -e
      ${bb} mkdir -p $out/lib
      for f in /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6 \
               /lib/aarch64-linux-gnu/libc.so.6 /lib64/libc.so.6 /usr/lib/libc.so.6; do
        if [ -e "$f" ]; then ${bb} cp -L "$f" $out/lib/; fi
      done
    '' ];
  };

  # `cp -RP` keeps symlinks as they are: a link out of the copied tree
  # dangles in the store, which Nix allows. Nix itself drops write and
  # setuid bits when it registers the output.
  copy = name: dir: derivation {
    name = "${name}-corpus-${toString epoch}";
    inherit system;
    builder = bb;
    args = [ "sh" "-c" ''
      set -e
      ${bb} mkdir -p $out/share $out/nix-support
      ${bb} cp -RP ${dir} $out/share/${name}
      echo ${base} > $out/nix-support/runtime-deps
    '' ];
  };

  packages = builtins.listToAttrs (builtins.concatMap
    (name:
      let found = present candidates.${name}; in
      if found == [ ] then [ ] else [ { inherit name; value = copy name (builtins.head found); } ])
    (builtins.attrNames candidates));
in
packages // {
  inherit base;
  all = derivation {
    name = "corpus-all-${toString epoch}";
    inherit system;
    builder = bb;
    args = [ "sh" "-c" "${bb} mkdir -p $out && echo ${toString (builtins.attrValues packages)} > $out/members" ];
  };
}
