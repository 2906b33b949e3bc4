# nixfleet.monitoring.nodeExporter: Prometheus node exporter with the systemd
# collector (the "monitoring" scope).
#
# Why it exists: rollout health is judged by the agent, but operators watch
# machines with Prometheus; the systemd collector shows failed units, the most
# common symptom of a bad generation.
{ config, lib, ... }:
let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.nixfleet.monitoring.nodeExporter;
in
{
  options.nixfleet.monitoring.nodeExporter = {
    enable = mkEnableOption "the Prometheus node exporter (the monitoring scope)";

    port = mkOption {
      type = types.port;
      default = 9100;
      description = "Port the exporter listens on.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` in the firewall.";
    };

    enabledCollectors = mkOption {
      type = types.listOf types.str;
      default = [
        "systemd"
        "filesystem"
        "cpu"
        "meminfo"
        "netdev"
        "diskstats"
        "loadavg"
        "pressure"
        "time"
      ];
      description = "Collectors turned on.";
    };

    disabledCollectors = mkOption {
      type = types.listOf types.str;
      default = [
        "textfile"
        "wifi"
        "infiniband"
        "nfs"
        "zfs"
      ];
      description = "Collectors turned off.";
    };
  };

  config = mkIf cfg.enable {
    services.prometheus.exporters.node = {
      enable = true;
      inherit (cfg)
        port
        openFirewall
        enabledCollectors
        disabledCollectors
        ;
    };
  };
}
