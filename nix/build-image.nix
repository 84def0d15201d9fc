# The two questions Strata's host asks Nix about an image: which of the
# requested packages exist, and "build them". Everything after that (runtime
# closure, layers, tarballs) is the host's job, which is why this file
# builds nothing of its own: it must work with any attribute set of
# derivations as the package set, so it uses builtins only, never `lib`,
# `runCommand` or other helpers a package set may not have.
#
# All inputs are strings passed with --argstr, package names included, so a
# name is data and can never be evaluated as Nix code:
#   source    JSON of plugin-sdk's NixSource, e.g. {"type":"path","path":"/srv/pkgs"}
#   packages  JSON list of attribute paths, e.g. ["git","xorg.xev"]
#   optional  JSON list of attribute paths added when the set has them
#             (Nixery's cacert and iana-etc); default []
#   system    e.g. x86_64-linux
#
# 1. Look up (evaluates, builds nothing):
#      nix-instantiate --eval --strict --json nix/build-image.nix -A lookup \
#        --argstr source S --argstr packages P --argstr optional O --argstr system X
#    prints one entry per name, in request order, for `packages` and `optional`:
#      {"packages":[{"name":"git","status":"found","drv":"/nix/store/…-git-2.42.0.drv",
#                    "paths":["/nix/store/…-git-2.42.0"],
#                    "meta":{"pname":"git","version":"2.42.0","homepage":"https://git-scm.com/",
#                            "licenses":[{"spdxId":"GPL-2.0-or-later","name":"gpl2Plus"}]}},
#                   {"name":"nope","status":"missing"},
#                   {"name":"oldpkg","status":"unavailable"}],
#       "optional":[…], "revision":"<commit the source was fetched at>" or null}
#    `unavailable`: looking the name up, or asking for its paths, threw or
#    failed an assertion (a removed alias, nixpkgs refusing a broken, unfree
#    or insecure package). `builtins.tryEval` keeps one such name from
#    failing the lookup of all the others, but it drops Nix's message:
#
# 2. Explain one unavailable name (evaluates it without tryEval, so that it
#    fails with the package set's own message on stderr):
#      nix-instantiate --eval --strict --json nix/build-image.nix -A explain \
#        --argstr source S --argstr packages '["oldpkg"]' --argstr system X
#
# 3. Build the names found:
#      nix-build nix/build-image.nix -A contents \
#        --argstr source S --argstr packages P --argstr system X --out-link DIR/result
#    builds the outputs to install of each package (missing ones are
#    skipped, step 1 reports them) and prints their out paths; the out links
#    are GC roots.
#
# A package's paths are those of `meta.outputsToInstall` when it has that
# (what nix-env and buildEnv install: nixpkgs often puts programs in `bin`,
# not in the default output), else its default output.
{ source, packages, optional ? "[]", system ? builtins.currentSystem }:

let
  loaded = import ./load-pkgs.nix { inherit source system; };
  pkgs = loaded.pkgs;

  isDerivation = v: builtins.isAttrs v && (v.type or null) == "derivation";

  # "xorg.xev" -> [ "xorg" "xev" ]
  splitPath = name: builtins.filter builtins.isString (builtins.split "[.]" name);

  # The value at `path` in `set`, or null if a step is missing.
  getPath = set: path: builtins.foldl'
    (v: key: if builtins.isAttrs v && builtins.hasAttr key v then builtins.getAttr key v else null)
    set
    path;

  # Image names cannot hold capitals (registry API), while package sets use
  # camelCase (`haskellPackages`). As Nixery does, a failed lookup is retried
  # with the first segment matched case-insensitively against the top level
  # only: nested sets often have names differing only in case. Lazy, so
  # only paid when an exact lookup fails.
  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toLower = builtins.replaceStrings upper lower;
  lowercaseTop = builtins.listToAttrs (map
    (k: { name = toLower k; value = k; })
    (builtins.filter (k: toLower k != k) (builtins.attrNames pkgs)));

  # A name resolving to something other than a derivation (`xorg` itself)
  # is as good as missing: there is nothing to put in an image.
  find = name:
    let
      path = splitPath name;
      first = builtins.head path;
      exact = getPath pkgs path;
      amended =
        if builtins.hasAttr first lowercaseTop
        then getPath pkgs ([ (builtins.getAttr first lowercaseTop) ] ++ builtins.tail path)
        else null;
    in
    if isDerivation exact then exact
    else if isDerivation amended then amended
    else null;

  # The derivations an image installs of a package.
  outputsOf = drv:
    let
      wanted = drv.meta.outputsToInstall or null;
      present = if builtins.isList wanted
        then builtins.filter
          (o: builtins.isString o && builtins.hasAttr o drv && isDerivation (builtins.getAttr o drv))
          wanted
        else [ ];
    in
    if present == [ ] then [ drv ] else map (o: builtins.getAttr o drv) present;

  # Everything step 1 forces of a name; null when the set lacks it. Throws
  # wherever the set throws (a removed alias on lookup, check-meta on the
  # paths).
  describe = name:
    let drv = find name;
    in
    if drv == null then null
    else { drv = drv.drvPath; paths = map (d: d.outPath) (outputsOf drv); };

  # A field the SBOM can use as text: anything else (a derivation, a
  # number) is left out rather than guessed at.
  stringOrNull = v: if builtins.isString v then v else null;

  # nixpkgs' `meta.homepage` is a URL or a list of them: the first.
  homepageOf = v:
    if builtins.isList v then (if v == [ ] then null else stringOrNull (builtins.head v))
    else stringOrNull v;

  # One entry of `meta.license`: nixpkgs' attribute set (with `spdxId`
  # where SPDX knows the licence), or a bare string in old packages, which
  # is offered as an SPDX id too (the host keeps it as one only if SPDX
  # knows it, as for "MIT"; "Public Domain" stays a named licence).
  licenseOf = l:
    if builtins.isString l then { spdxId = l; name = l; }
    else if builtins.isAttrs l then {
      spdxId = stringOrNull (l.spdxId or null);
      name = stringOrNull (l.shortName or l.fullName or null);
    }
    else null;

  # What the SBOM tells of a requested package, read here because this
  # lookup runs anyway (a second evaluation per request would cost as much
  # as the lookup). Only these fields are forced, each under its own
  # tryEval, and each licence of a list under its own: a meta field that
  # throws costs the SBOM that field (or that one licence), never the
  # package its place in the image.
  sbomMeta = drv:
    let
      safe = v: let t = builtins.tryEval (builtins.deepSeq v v); in if t.success then t.value else null;
      meta = let t = builtins.tryEval (drv.meta or { }); in
        if t.success && builtins.isAttrs t.value then t.value else { };
      licenseList =
        let t = builtins.tryEval (meta.license or null); in
        if !t.success || t.value == null then [ ]
        else if builtins.isList t.value then t.value
        else [ t.value ];
    in
    {
      pname = safe (stringOrNull (drv.pname or null));
      version = safe (stringOrNull (drv.version or null));
      homepage = safe (homepageOf (meta.homepage or null));
      licenses = builtins.filter (x: x != null) (map (l: safe (licenseOf l)) licenseList);
    };

  status = name:
    let
      described = describe name;
      tried = builtins.tryEval (builtins.deepSeq described described);
    in
    if !tried.success then { inherit name; status = "unavailable"; }
    else if tried.value == null then { inherit name; status = "missing"; }
    else { inherit name; status = "found"; meta = sbomMeta (find name); } // tried.value;

  names = builtins.fromJSON packages;
in
{
  lookup = {
    packages = map status names;
    optional = map status (builtins.fromJSON optional);
    inherit (loaded) revision;
  };

  # Fetches the source and nothing more: whether a revision exists.
  revision = loaded.revision;

  # Whether the package set itself evaluates (when a lookup failed outside
  # tryEval: the set, or one of the names?).
  loads = builtins.isAttrs pkgs;

  explain = map (name: builtins.deepSeq (describe name) name) names;

  contents = builtins.concatMap
    (name: let drv = find name; in if drv == null then [ ] else outputsOf drv)
    names;
}
