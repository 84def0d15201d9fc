# Turns a package-source description into a package set, and tells the
# commit it was fetched at where Nix knows it.
#
# `source` is the JSON form of plugin-sdk's `NixSource`, passed with
# --argstr: it arrives as data, so nothing a plugin or a request says is ever
# parsed as Nix code. Only builtins are used: the package set is not loaded
# yet, and any attribute set of derivations must work as one.
#
# Returns { pkgs = <the package set>; revision = <commit or null>; }.
{ source, system }:

let
  src = builtins.fromJSON source;

  # Package sets are usually functions (nixpkgs is). Offer only what the
  # function names, so that sets without a `system` argument (or with a
  # strict argument list) can be imported too.
  call = offered: set:
    if builtins.isFunction set
    then set (builtins.intersectAttrs (builtins.functionArgs set) offered)
    else set;

  # `allow_unfree` of the source plugin, as nixpkgs' own switches: all
  # unfree packages, or those named (by `pname`, as nixpkgs' lib.getName).
  unfree = src.allowUnfree or null;
  nameOf = pkg: pkg.pname or (builtins.parseDrvName (pkg.name or "")).name;
  unfreeConfig =
    if unfree == true then { allowUnfree = true; }
    else if builtins.isList unfree then { allowUnfreePredicate = pkg: builtins.elem (nameOf pkg) unfree; }
    else { };

  # For nixpkgs proper we also pin `config` and `overlays`: otherwise it
  # reads ~/.config/nixpkgs of whichever user runs the server, and two
  # servers on the same revision could build different images.
  nixpkgsArgs = { inherit system; config = unfreeConfig; overlays = [ ]; };

  # What a git or path set is offered: `config` only when unfree packages
  # are allowed (a set that takes it, as nixpkgs and the demo set do).
  setArgs = { inherit system; } // (if unfree == null then { } else { config = unfreeConfig; });

  isCommit = s: builtins.match "[0-9a-f]{40}" s != null;

  # GitHub serves a tarball for a branch (a channel such as
  # `nixos-unstable`) and for a commit alike, as Nixery relies on. The name
  # is checked so that it can only ever be one URL path segment. Only a
  # commit name tells the revision: a tarball of a branch does not.
  fromChannel = channel:
    if builtins.match "[A-Za-z0-9][A-Za-z0-9._-]*" channel == null
    then throw "strata: invalid nixpkgs channel or commit name: ${builtins.toJSON channel}"
    else {
      pkgs = call nixpkgsArgs (import (builtins.fetchTarball
        "https://github.com/NixOS/nixpkgs/archive/${channel}.tar.gz"));
      revision = if isCommit channel then channel else null;
    };

  # fetchGit only finds a `rev` on the fetched ref (HEAD by default); a
  # commit on another branch needs `allRefs` when no ref is given.
  fromGit = { url, rev ? null, ref ? null, ... }:
    let
      fetched = builtins.fetchGit (
        { inherit url; }
        // (if rev != null then { inherit rev; } else { })
        // (if ref != null then { inherit ref; } else { })
        // (if rev != null && ref == null then { allRefs = true; } else { }));
    in
    { pkgs = call setArgs (import fetched); revision = fetched.rev or null; };

  fromPath = path:
    if builtins.substring 0 1 path != "/"
    then throw "strata: a path source must be absolute, got ${builtins.toJSON path}"
    else { pkgs = call setArgs (import path); revision = null; };

  # The host hands over the flake reference complete, revision included.
  # `legacyPackages` first (nixpkgs' packages, nested sets and all), then
  # `packages`; its inputs are those its flake.lock pins. A dirty git tree
  # or a path: flake has no commit. A flake's outputs are instantiated
  # already, with the flake's own config: to allow unfree packages, a flake
  # whose default.nix is a package-set function taking `config` (nixpkgs'
  # is) is imported from there instead, as a git source would be.
  fromFlake = url:
    let
      flake = builtins.getFlake url;
      root = flake.outPath + "/default.nix";
      set = import root;
      reimport = unfree != null && builtins.pathExists root
        && builtins.isFunction set && (builtins.functionArgs set) ? config;
    in {
      pkgs = (flake.packages.${system} or { })
        // (if reimport then call nixpkgsArgs set else flake.legacyPackages.${system} or { });
      revision = flake.rev or null;
    };
in
if src.type == "channel" then fromChannel src.channel
else if src.type == "git" then fromGit src
else if src.type == "path" then fromPath src.path
else if src.type == "flake" then fromFlake src.url
else throw "strata: unknown package source type ${builtins.toJSON src.type}"
