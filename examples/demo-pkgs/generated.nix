# A generated package set for benchmarks: a few hundred packages whose
# sizes, contents and dependencies imitate a real distribution, built
# offline from busybox alone in well under two minutes.
#
#   glibc  <-  core libraries (zlib, openssl, ...)  <-  libraries  <-  apps
#
# Everything about a package (version, size, how compressible its files
# are, which packages it depends on) is derived from its name by hashing,
# so the set is the same on every machine and at every evaluation. Most
# packages are small (1-64 KiB), some are medium or large, and a few are
# huge (`llvm` is 200 MiB at scale 1). Files are part text-like (compresses
# well) and part random-looking (does not compress at all), in proportions
# that vary by package.
#
# Knobs:
#   scale  multiplies every size: 0.01 for a quick set, 1 for the default
#          (about 610 MiB), 2 for twice that.
#   bump   bumps the version of `bumpLib` (default `zlib`, a low-level
#          library most of the set depends on) when not 0. Every package
#          depending on it, directly or not, gets a new store path, as a zlib
#          update does in nixpkgs: what a benchmark of re-downloads needs.
#          With bump = 1, 273 of the 308 packages change for zlib, fewer for
#          a leaf such as `libjpeg`.
#   libs, apps  how many generated libraries and applications.
#
#   NIX_CONFIG='substituters =' nix-build examples/demo-pkgs/generated.nix -A app-bajaba
#   NIX_CONFIG='substituters =' nix-build examples/demo-pkgs/generated.nix -j2 --no-out-link  # everything
#   nix-instantiate --eval -E 'builtins.attrNames (import ./examples/demo-pkgs/generated.nix {})'
{ system ? builtins.currentSystem
, busyboxDir ? /usr/bin
, scale ? 1
, bump ? 0
, bumpLib ? "zlib"
, libs ? 80
, apps ? 200
, ...
}:

let
  inherit (builtins) elemAt foldl' genList hashString length listToAttrs map substring stringLength toString;

  busyboxStore = builtins.path {
    name = "busybox-static";
    path = busyboxDir;
    filter = path: type: baseNameOf path == "busybox";
  };
  bb = "${busyboxStore}/busybox";

  # ------------------------------------------------- deterministic choices

  hexDigits = { "0" = 0; "1" = 1; "2" = 2; "3" = 3; "4" = 4; "5" = 5; "6" = 6; "7" = 7;
                "8" = 8; "9" = 9; "a" = 10; "b" = 11; "c" = 12; "d" = 13; "e" = 14; "f" = 15; };
  chars = s: genList (i: substring i 1 s) (stringLength s);
  # A number in [0, 2^28) from a name; `salt` makes independent choices.
  hashInt = salt: name: foldl' (acc: c: acc * 16 + hexDigits.${c}) 0
    (chars (substring 0 7 (hashString "sha256" "${salt}:${name}")));
  mod = a: b: a - (a / b) * b;
  pick = salt: name: list: elemAt list (mod (hashInt salt name) (length list));
  unique = list: builtins.attrValues (listToAttrs (map (d: { name = d.name; value = d; }) list));

  KiB = 1024;
  MiB = 1024 * KiB;
  scaled = bytes: let s = builtins.ceil (bytes * scale); in if s < 1 then 1 else s;

  # Mostly small, some medium, a few large.
  sizeOf = name:
    let bucket = mod (hashInt "bucket" name) 100; r = hashInt "size" name; in
    scaled (
      if bucket < 70 then 1 * KiB + mod r (63 * KiB)
      else if bucket < 92 then 64 * KiB + mod r (2 * MiB)
      else if bucket < 99 then 2 * MiB + mod r (10 * MiB)
      else 12 * MiB + mod r (28 * MiB));

  # Percent of a package's bytes that look random (do not compress).
  randomShareOf = name: pick "random" name [ 10 30 50 70 90 ];

  versionOf = name: "${toString (1 + mod (hashInt "major" name) 9)}.${toString (mod (hashInt "minor" name) 20)}.${toString (mod (hashInt "patch" name) 10)}";

  syllables = [ "ba" "ko" "du" "ri" "ne" "sa" "lo" "mi" "tu" "fe" "za" "pi" "go" "ve" "xu" "ha"
                "ja" "qi" "wo" "ce" "ly" "mo" "nu" "ta" "ge" "bi" "ru" "so" "de" "ka" "po" "fi" ];
  wordOf = i: n: builtins.concatStringsSep "" (genList (k: elemAt syllables (mod (i / (pow 32 k)) 32)) n);
  pow = b: e: if e == 0 then 1 else b * pow b (e - 1);

  # --------------------------------------------------------- the builder

  # 1 MiB of random-looking bytes (an LCG in awk), built once and read by
  # every package build, never referenced at run time. Packages differ by
  # where they start in it and by a byte rotation, so that no two files are
  # alike and repeated blocks are no help to a compressor.
  pool = derivation {
    name = "strata-bench-entropy-pool";
    inherit system;
    builder = bb;
    args = [ "sh" "-c" ''
      set -eu -o pipefail
      awk 'BEGIN {
        s = 20231123
        for (i = 0; i < 349525; i++) {
          s = (s * 69069 + 1) % 4294967296
          printf "%06x", int(s / 256)
        }
        printf "00"
      }' | xxd -r -p > $out
    '' ];
  };

  sentences = [
    "The quick brown fox jumps over the lazy dog while the build log scrolls on."
    "Configuration files are read from the system directory and then from the home directory."
    "This program is free software; you can redistribute it and/or modify it under the terms."
    "Returns zero on success and a negative error code when the stream cannot be opened."
  ];

  builderScript = ''
    set -eu -o pipefail
    oct() { printf '\\%03o' "$1"; }
    # random FILE BYTES: pool bytes, rotated by ROT+i for the i-th MiB.
    random() {
      n=$(( ($2 + 1048575) / 1048576 )); i=0
      while [ $i -lt $n ]; do
        r=$(( (rot + i) % 255 + 1 ))
        { tail -c +$((off + 1)) $pool; head -c $off $pool; } \
          | tr '\000-\377' "$(oct $r)-\\377\\000-$(oct $((r - 1)))"
        i=$((i + 1))
      done > "$1"
      truncate -s "$2" "$1"
    }
    # text FILE BYTES: numbered lines of prose, each with a token from the
    # pool, so it compresses like text rather than to nothing.
    text() {
      : > "$1"; i=0
      while [ "$(stat -c %s "$1")" -lt "$2" ]; do
        dd if=$pool bs=4096 skip=$(( (off / 4096 + i) % 256 )) count=4 2>/dev/null \
          | xxd -p -c 6 | sed "s|^|$i:|; s|\$| $sentence|" >> "$1"
        i=$((i + 1))
      done
      truncate -s "$2" "$1"
    }
    mkdir -p $out/lib $out/share/doc/$pname $out/nix-support
    # The runtime references, as an RPATH would hold them.
    for d in $deps; do echo "$d/lib"; done > $out/nix-support/rpath
    random $out/lib/lib$pname.so $randomBytes
    text $out/share/doc/$pname/README $textBytes
    if [ -n "$program" ]; then
      mkdir -p $out/bin
      { echo "#!${bb} sh"; echo "echo $pname $version"; } > $out/bin/$pname
      chmod 755 $out/bin/$pname
    fi
  '';

  mkPkg = { pname, version, deps, size, program ? false, seed ? "" }:
    let
      key = "${pname}${seed}";
      randomBytes = size * randomShareOf key / 100;
    in
    derivation {
      name = "${pname}-${version}";
      inherit system pname version deps pool randomBytes;
      textBytes = size - randomBytes;
      program = if program then "1" else "";
      off = mod (hashInt "offset" key) MiB;
      rot = mod (hashInt "rotation" key) 255;
      sentence = pick "sentence" key sentences;
      builder = bb;
      args = [ "sh" "-c" builderScript ];
    };

  # ------------------------------------------------------------ the set

  glibc = mkPkg { pname = "glibc"; version = "2.38"; deps = [ ]; size = scaled (6 * MiB); };

  # Hand-written, so that the low levels look like a distribution's.
  coreDeps = {
    zlib = [ ];
    bzip2 = [ ];
    xz = [ ];
    zstd = [ ];
    libffi = [ ];
    gmp = [ ];
    expat = [ ];
    pcre2 = [ ];
    ncurses = [ ];
    readline = [ "ncurses" ];
    openssl = [ "zlib" ];
    mpfr = [ "gmp" ];
    sqlite = [ "zlib" "readline" ];
    libxml2 = [ "zlib" "xz" ];
    libpng = [ "zlib" ];
    libjpeg = [ ];
    freetype = [ "zlib" "bzip2" "libpng" ];
    fontconfig = [ "freetype" "expat" ];
    icu = [ ];
    libyaml = [ ];
    curl = [ "zlib" "openssl" "zstd" ];
    libuv = [ ];
    libevent = [ "openssl" ];
    gettext = [ "libxml2" "ncurses" ];
  };
  bumped = pname: pname == bumpLib && bump != 0;
  core = builtins.mapAttrs (pname: depNames: mkPkg {
    inherit pname;
    version = versionOf pname + (if bumped pname then ".${toString bump}" else "");
    seed = if bumped pname then "-bump${toString bump}" else "";
    deps = [ glibc ] ++ map (d: core.${d}) depNames;
    size = sizeOf pname;
  }) coreDeps;
  coreList = builtins.attrValues core;

  # Libraries depend on 1-3 core libraries and up to 2 earlier libraries.
  libNames = genList (i: "lib${wordOf (i * 7 + 3) 2}") libs;
  libList = genList (i:
    let pname = elemAt libNames i; earlier = genList (k: elemAt libList k) i; in
    mkPkg {
      inherit pname;
      version = versionOf pname;
      size = sizeOf pname;
      deps = unique ([ glibc ]
        ++ genList (k: pick "core${toString k}" pname coreList) (1 + mod (hashInt "ncore" pname) 3)
        ++ (if i == 0 then [ ] else genList (k: pick "lib${toString k}" pname earlier) (mod (hashInt "nlib" pname) 3)));
    }) libs;

  # Applications depend on 1-5 libraries of either kind.
  appNames = genList (i: "app-${wordOf (i * 13 + 5) 3}") apps;
  mkApp = pname: size: mkPkg {
    inherit pname size;
    version = versionOf pname;
    program = true;
    deps = unique ([ glibc ]
      ++ genList (k: pick "dep${toString k}" pname (coreList ++ libList)) (1 + mod (hashInt "ndeps" pname) 5));
  };

  # A few giants, as compilers and TeX are.
  giants = {
    llvm = mkApp "llvm" (scaled (200 * MiB));
    ghc = mkApp "ghc" (scaled (100 * MiB));
    texlive = mkApp "texlive" (scaled (40 * MiB));
  };
in
{ inherit glibc; }
// core
// listToAttrs (map (p: { name = p.pname; value = p; }) libList)
// listToAttrs (map (n: { name = n; value = mkApp n (sizeOf n); }) appNames)
// giants
