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
#   system    e.g. x86_64-linux
#
# 1. Look up (evaluates, builds nothing):
#      nix-instantiate --eval --strict --json nix/build-image.nix -A lookup \
#        --argstr source S --argstr packages P --argstr system X
#    prints {"found":[{"name":"git","path":"/nix/store/…-git-2.42.0"}],"missing":["nope"]}
#    with `found` in request order. (The key is `path`, not `outPath`: Nix
#    prints any attribute set that has an `outPath` as that string alone.)
#
# 2. Build what was found:
#      nix-build nix/build-image.nix -A contents \
#        --argstr source S --argstr packages P --argstr system X --out-link DIR/result
#    builds the found packages (missing ones are skipped, step 1 reports
#    them) and prints their out paths; the out links are GC roots.
{ source, packages, system ? builtins.currentSystem }:

let
  pkgs = import ./load-pkgs.nix { inherit source system; };

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

  requested = map (name: { inherit name; drv = find name; }) (builtins.fromJSON packages);
  found = builtins.filter (r: r.drv != null) requested;
in
{
  lookup = {
    missing = map (r: r.name) (builtins.filter (r: r.drv == null) requested);
    found = map (r: { inherit (r) name; path = r.drv.outPath; }) found;
  };

  contents = map (r: r.drv) found;
}
