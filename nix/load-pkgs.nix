# Turns a package-source description into a package set.
#
# `source` is the JSON form of plugin-sdk's `NixSource`, passed with
# --argstr: it arrives as data, so nothing a plugin or a request says is ever
# parsed as Nix code. Only builtins are used: the package set is not loaded
# yet, and any attribute set of derivations must work as one.
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

  # GitHub serves a tarball for a branch (a channel such as
  # `nixos-unstable`) and for a commit alike, as Nixery relies on. The name
  # is checked so that it can only ever be one URL path segment.
  fromChannel = channel:
    if builtins.match "[A-Za-z0-9][A-Za-z0-9._-]*" channel == null
    then throw "strata: invalid nixpkgs channel or commit name: ${builtins.toJSON channel}"
    else call nixpkgsArgs (import (builtins.fetchTarball
      "https://github.com/NixOS/nixpkgs/archive/${channel}.tar.gz"));

  # fetchGit only finds a `rev` on the fetched ref (HEAD by default); a
  # commit on another branch needs `allRefs` when no ref is given.
  fromGit = { url, rev ? null, ref ? null, ... }:
    call { inherit system; } (import (builtins.fetchGit (
      { inherit url; }
      // (if rev != null then { inherit rev; } else { })
      // (if ref != null then { inherit ref; } else { })
      // (if rev != null && ref == null then { allRefs = true; } else { }))));

  fromPath = path:
    if builtins.substring 0 1 path != "/"
    then throw "strata: a path source must be absolute, got ${builtins.toJSON path}"
    else call { inherit system; } (import path);
in
if src.type == "channel" then fromChannel src.channel
else if src.type == "git" then fromGit src
else if src.type == "path" then fromPath src.path
else throw "strata: unknown package source type ${builtins.toJSON src.type}"
