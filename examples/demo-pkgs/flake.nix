# The demo package set as a flake, for trying Strata's flake source offline:
#
#   [plugins.config.nixpkgs-source]
#   flake = "path:/abs/path/to/examples/demo-pkgs"     # or git+file:///repo?dir=examples/demo-pkgs
#
# It has no inputs, so its flake.lock pins nothing and nothing is fetched.
# The set imports the machine's static busybox (/usr/bin/busybox), which
# only an impure evaluation may read: Strata evaluates flakes that way
# (nix-instantiate with builtins.getFlake); `nix build .#hello` (pure) would
# refuse it.
{
  description = "Strata's offline demo package set";

  outputs = { self }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
    in
    {
      # legacyPackages, as nixpkgs' flake has it: nested sets
      # (haskellPackages.pandoc, xorg.xev) are allowed there only.
      legacyPackages = forAll (system: import ./default.nix { inherit system; });
    };
}
