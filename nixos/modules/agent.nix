# services.nixfleet-agent: the per-machine agent that polls the control plane
# and switches the machine to its desired generation.
#
# Why it looks like this: the agent runs switch-to-configuration, so it runs
# as root without a sandbox (a sandbox would break the switch). Its own unit must survive the switch it starts:
# restartIfChanged = false and X-StopOnRemoval = false keep systemd from
# killing it mid-rollout. Its command line is rendered from
# nixos/service-flags.json (nixos/lib/flags.nix) and its health checks are
# written to the file format of `HealthChecksConfig` in
# proto/src/api/v1.rs (nixos/lib/health-checks.nix).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    mkPackageOption
    types
    ;

  cfg = config.services.nixfleet-agent;
  flags = import ../lib/flags.nix;
  healthChecksLib = import ../lib/health-checks.nix;
  service = "nixfleet-agent";
  default = flags.default service;
  # An option whose default is the one in nixos/service-flags.json.
  option = flags.option lib service;

  values = flags.valuesFrom service cfg;
  argv = flags.args { inherit service values; };

  isStorePath = p: p != null && (builtins.isPath p || lib.hasPrefix builtins.storeDir (toString p));

  healthChecksJson = builtins.toJSON (healthChecksLib.render cfg.healthChecks);

  stateDirName = lib.removePrefix "/var/lib/" cfg.stateDir;

  # Every control plane, in the order of the agent's flags (controlPlaneUrl first).
  controlPlaneUrls = lib.optional (cfg.controlPlaneUrl != null) cfg.controlPlaneUrl ++ cfg.controlPlaneUrls;

  # Per-check interval; the defaults (http 5 s, command 10 s) are v0.1's and
  # the local vmtests harness uses the same.
  intervalOption =
    default:
    mkOption {
      type = types.nullOr types.ints.positive;
      inherit default;
      description = "Seconds between runs of this check (null: the agent's healthInterval).";
    };
in
{
  options.services.nixfleet-agent = {
    enable = mkEnableOption "the nixfleet agent";

    package = mkPackageOption pkgs "nixfleet-agent" { };

    controlPlaneUrl = mkOption {
      type = types.nullOr types.str;
      default = default "controlPlaneUrl";
      example = "https://cp.example.org:8080";
      description = ''
        Base URL of the control plane. With several control planes, list them
        in `controlPlaneUrls`; this one, when set, is tried before them.
      '';
    };

    controlPlaneUrls = mkOption {
      type = types.listOf types.str;
      default = default "controlPlaneUrls";
      example = [
        "https://cp-1.example.org:8080"
        "https://cp-2.example.org:8080"
      ];
      description = ''
        Base URLs of several control planes, in the order the agent tries
        them: on a connection failure or an HTTP 503 it moves to the next
        and stays with the one that answers (docs/agent.md).
      '';
    };

    machineId = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "Machine id; must equal the CN of the client certificate.";
    };

    pollInterval = option "pollInterval" types.ints.positive "Seconds between polls of the desired generation.";

    retryInterval = option "retryInterval" types.ints.positive "Seconds before the next poll after a failed one.";

    cacheUrl = mkOption {
      type = types.nullOr types.str;
      default = default "cacheUrl";
      example = "http://cache:5000";
      description = "Binary cache to fetch closures from when the control plane names none.";
    };

    stateDir = option "stateDir" types.str "Agent state directory (directly under /var/lib; the unit's StateDirectory).";

    dryRun = option "dryRun" types.bool "Fetch and report, but never switch.";

    allowInsecure = option "allowInsecure" types.bool "Allow a plain http:// control plane URL. For tests only.";

    tls = {
      caCert = option "tls.caCert" (types.nullOr types.str) "CA (PEM) that signed the control plane's certificate.";
      clientCert = option "tls.clientCert" (types.nullOr types.str) "Client certificate (PEM) whose CN is machineId.";
      clientKey = option "tls.clientKey" (types.nullOr types.str) "Client private key (PEM). Must not be a store path.";
    };

    healthConfig = mkOption {
      type = types.str;
      default = default "healthConfig";
      description = ''
        Path of the health check file the agent reads. When it is under /etc,
        the module writes it from `healthChecks`.
      '';
    };

    healthInterval = option "healthInterval" types.ints.positive "Seconds between periodic health reports.";

    tags = mkOption {
      type = types.listOf types.str;
      default = default "tags";
      example = [
        "web"
        "eu-west"
      ];
      description = "Tags the agent reports; rollouts target machines by tag.";
    };

    metricsPort = option "metricsPort" (types.nullOr types.port) "Port of the agent's Prometheus listener (null: off).";

    metricsOpenFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open metricsPort in the firewall.";
    };

    profile = option "profile" types.str "System profile the agent sets before switching.";

    currentSystem = option "currentSystem" types.str "Symlink to the running system.";

    switchMode = mkOption {
      type = types.enum [
        "auto"
        "systemd-run"
        "direct"
      ];
      default = default "switchMode";
      description = ''
        How the agent runs switch-to-configuration: `systemd-run` (a transient
        unit that outlives the agent), `direct` (a child process), or `auto`
        (systemd-run when systemd runs the machine).
      '';
    };

    switchTimeout = option "switchTimeout" types.ints.positive "Seconds to wait for a switch to finish.";

    logFormat = option "logFormat" (types.enum [
      "human"
      "json"
    ]) "Log line format on stderr (the journal).";

    healthChecks = {
      systemd = mkOption {
        default = [ ];
        description = "Units that must be active.";
        type = types.listOf (
          types.submodule {
            options.units = mkOption {
              type = types.listOf types.str;
              description = "Unit names.";
            };
            options.interval = intervalOption null;
          }
        );
      };
      http = mkOption {
        default = [ ];
        description = "HTTP GETs that must answer with the expected status.";
        type = types.listOf (
          types.submodule {
            options.url = mkOption {
              type = types.str;
              description = "URL to GET.";
            };
            options.interval = intervalOption 5;
            options.timeout = mkOption {
              type = types.ints.positive;
              default = 3;
              description = "Seconds before the check fails.";
            };
            options.expectedStatus = mkOption {
              type = types.ints.between 100 599;
              default = 200;
              description = "HTTP status that passes.";
            };
          }
        );
      };
      command = mkOption {
        default = [ ];
        description = "Commands (run with /bin/sh -c) that must exit 0.";
        type = types.listOf (
          types.submodule {
            options.name = mkOption {
              type = types.str;
              description = "Check name in reports.";
            };
            options.command = mkOption {
              type = types.str;
              description = "Shell command.";
            };
            options.interval = intervalOption 10;
            options.timeout = mkOption {
              type = types.ints.positive;
              default = 5;
              description = "Seconds before the command is killed.";
            };
          }
        );
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = !isStorePath cfg.tls.clientKey;
        message = "services.nixfleet-agent.tls.clientKey must not be a store path (the Nix store is world-readable).";
      }
      {
        assertion = (cfg.tls.clientCert == null) == (cfg.tls.clientKey == null);
        message = "services.nixfleet-agent: set tls.clientCert and tls.clientKey together.";
      }
      {
        assertion = controlPlaneUrls != [ ];
        message = "services.nixfleet-agent: set controlPlaneUrl or controlPlaneUrls.";
      }
      {
        assertion = !lib.any (lib.hasInfix ",") controlPlaneUrls;
        message = "services.nixfleet-agent: a control plane URL holds a comma, which the agent reads as a separator.";
      }
      {
        assertion = cfg.allowInsecure || !lib.any (lib.hasPrefix "http://") controlPlaneUrls;
        message = "services.nixfleet-agent.controlPlaneUrl(s) is plain http:// (${lib.concatStringsSep ", " (lib.filter (lib.hasPrefix "http://") controlPlaneUrls)}); use https:// or set allowInsecure = true (tests only).";
      }
      {
        assertion = lib.hasPrefix "/var/lib/" cfg.stateDir && stateDirName != "" && !lib.hasInfix "/" stateDirName;
        message = "services.nixfleet-agent.stateDir must be a directory directly under /var/lib, got ${cfg.stateDir}.";
      }
    ];

    environment.etc = mkIf (lib.hasPrefix "/etc/" cfg.healthConfig) {
      ${lib.removePrefix "/etc/" cfg.healthConfig}.text = healthChecksJson;
    };

    networking.firewall.allowedTCPPorts = mkIf (cfg.metricsOpenFirewall && cfg.metricsPort != null) [
      cfg.metricsPort
    ];

    systemd.services.nixfleet-agent = {
      description = "nixfleet agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "nix-daemon.service"
      ];

      # The agent switches the system; a switch must never restart or stop the
      # agent that started it.
      restartIfChanged = false;
      unitConfig."X-StopOnRemoval" = false;
      startLimitIntervalSec = 0;

      path = [
        config.nix.package
        config.systemd.package
      ];

      environment = {
        XDG_CACHE_HOME = "${cfg.stateDir}/.cache";
        NIX_CONFIG = "extra-experimental-features = nix-command";
      };

      serviceConfig = {
        Type = "simple";
        ExecStart = flags.execLine (lib.getExe' cfg.package "nixfleet-agent") argv;
        User = "root";
        Restart = "always";
        RestartSec = "30s";
        StateDirectory = stateDirName;
        StateDirectoryMode = "0700";
        # No further sandboxing: switch-to-configuration needs all of root.
      };
    };
  };
}
