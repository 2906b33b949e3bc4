# The NixOS VM tests: one check per directory of vmtests/scenarios, named
# vm-<directory> (a directory already named vm-... keeps its name).
#
# Why it exists: flake.nix takes its vm-* checks from here, so a new scenario
# lands in `nix flake check` and `nix run .#validate -- --vm` by adding its
# directory, with no list to edit. x86_64-linux with KVM only.
{
  pkgs,
  nixosModule,
  packages,
}:
let
  inherit (pkgs) lib;
  helpers = import ./nix/helpers.nix {
    inherit
      pkgs
      lib
      nixosModule
      packages
      ;
  };
  scenarios = import ./nix/discover.nix ./scenarios;
in
builtins.mapAttrs (
  checkName: s:
  import ./nix/scenario.nix {
    inherit
      pkgs
      lib
      helpers
      checkName
      ;
    inherit (s) dir;
  }
) scenarios
