# nixfleet.role: named bundles of scopes (endpoint, server, workstation).
#
# Why it exists: most machines are one of a few kinds, and a role makes the
# kind explicit in one line. Roles only turn scopes on with mkDefault, so a
# host can still switch any single scope off.
{ config, lib, ... }:
let
  inherit (lib) mkDefault mkIf mkMerge mkOption types;
  role = config.nixfleet.role;
in
{
  options.nixfleet.role = mkOption {
    type = types.nullOr (
      types.enum [
        "endpoint"
        "server"
        "workstation"
      ]
    );
    default = null;
    description = ''
      endpoint: core and secrets, minimal (no graphical or development tools, no Docker).
      server: core, firewall, node exporter and secrets.
      workstation: core, firewall, secrets, backup available (off), NetworkManager groups.
    '';
  };

  config = mkMerge [
    (mkIf (role == "endpoint") {
      nixfleet.core.enable = mkDefault true;
      nixfleet.secrets.enable = mkDefault true;
      # Minimal: nothing beyond the core tools.
      environment.defaultPackages = mkDefault [ ];
      documentation.enable = mkDefault false;
      services.xserver.enable = mkDefault false;
      virtualisation.docker.enable = mkDefault false;
    })
    (mkIf (role == "server") {
      nixfleet.core.enable = mkDefault true;
      nixfleet.firewall.enable = mkDefault true;
      nixfleet.monitoring.nodeExporter.enable = mkDefault true;
      nixfleet.secrets.enable = mkDefault true;
    })
    (mkIf (role == "workstation") {
      nixfleet.core.enable = mkDefault true;
      nixfleet.firewall.enable = mkDefault true;
      nixfleet.secrets.enable = mkDefault true;
      nixfleet.backup.enable = mkDefault false;
      users.users = mkIf (config.nixfleet.core.userName != null) {
        ${config.nixfleet.core.userName}.extraGroups = [
          "networkmanager"
          "video"
          "audio"
        ];
      };
    })
  ];
}
