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

  # For nixpkgs proper we also pin `config` and `overlays`: otherwise it
  # reads ~/.config/nixpkgs of whichever user runs the server, and two
  # servers on the same revision could build different images.
  nixpkgsArgs = { inherit system; config = { }; overlays = [ ]; };

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
    { pkgs = call { inherit system; } (import fetched); revision = fetched.rev or null; };

  fromPath = path:
    if builtins.substring 0 1 path != "/"
    then throw "strata: a path source must be absolute, got ${builtins.toJSON path}"
    else { pkgs = call { inherit system; } (import path); revision = null; };

  # The host hands over the flake reference complete, revision included.
  # `legacyPackages` first (nixpkgs' packages, nested sets and all), then
  # `packages`; its inputs are those its flake.lock pins. A dirty git tree
  # or a path: flake has no commit.
  fromFlake = url:
    let flake = builtins.getFlake url;
    in {
      pkgs = (flake.packages.${system} or { }) // (flake.legacyPackages.${system} or { });
      revision = flake.rev or null;
    };
in
if src.type == "channel" then fromChannel src.channel
else if src.type == "git" then fromGit src
else if src.type == "path" then fromPath src.path
else if src.type == "flake" then fromFlake src.url
else throw "strata: unknown package source type ${builtins.toJSON src.type}"
