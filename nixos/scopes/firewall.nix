# nixfleet.firewall: nftables firewall with rate-limited SSH and drop logging
# (the "firewall" scope).
#
# Why it exists: fleet machines face networks we do not control. SSH is the
# one port every machine keeps open, so new SSH connections are rate limited
# (a plain allowedTCPPorts entry would accept them unconditionally), and what
# the firewall drops is logged so an operator can see it.
{ config, lib, ... }:
let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.nixfleet.firewall;
  sshPorts = builtins.concatStringsSep ", " (map toString config.services.openssh.ports);
in
{
  options.nixfleet.firewall = {
    enable = mkEnableOption "the nixfleet firewall scope (nftables, rate-limited SSH, drop logging)";

    sshRateLimit = mkOption {
      type = types.str;
      default = "5/minute";
      description = "nftables rate for new SSH connections; the rest are logged and dropped.";
    };
  };

  config = mkIf cfg.enable {
    networking.nftables.enable = true;
    networking.firewall = {
      enable = true;
      logRefusedConnections = true;
      logReversePathDrops = true;
      # SSH enters through the rate-limited rule below, not allowedTCPPorts.
      extraInputRules = ''
        tcp dport { ${sshPorts} } ct state new limit rate ${cfg.sshRateLimit} accept
        tcp dport { ${sshPorts} } ct state new counter log prefix "nixfleet-fw ssh-rate-limit: " level info drop
      '';
    };
    services.openssh.openFirewall = false;
  };
}
