# nixpkgs' harmonia module before harmonia 3 (services.harmonia.{enable,signKeyPaths,settings}),
# options only: the layout nixos/modules/cache-server.nix also follows.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.services.harmonia = {
    enable = lib.mkEnableOption "Harmonia: Nix binary cache written in Rust";
    package = mkOption { type = types.package; default = pkgs.harmonia; };
    signKeyPath = mkOption { type = types.nullOr types.path; default = null; };
    signKeyPaths = mkOption { type = types.listOf types.path; default = [ ]; };
    settings = mkOption { type = (pkgs.formats.toml { }).type; default = { }; };
  };
}
