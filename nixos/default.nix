# Every nixfleet NixOS module: the services and the framework scopes. Each is
# off until enabled, so importing this file changes nothing by itself.
{
  imports = [
    ./modules/control-plane.nix
    ./modules/agent.nix
    ./modules/cache-server.nix
    ./modules/cache.nix
    ./scopes/core.nix
    ./scopes/firewall.nix
    ./scopes/monitoring.nix
    ./scopes/backup.nix
    ./scopes/secrets.nix
    ./roles/default.nix
  ];
}
