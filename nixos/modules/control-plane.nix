# services.nixfleet-control-plane: the nixfleet control plane as a hardened,
# socket-free systemd service.
#
# Why it looks like this: the control plane holds the fleet's event log and
# its TLS key, and needs nothing from the host but a port and a state
# directory. So it runs as a dynamic user with every Protect*/Restrict*
# setting on, the key arrives through LoadCredential (never the world-readable
# store), and the configuration is checked at build time by the binary itself
# (`--check-config`), so a bad config fails `nixos-rebuild`, not the boot.
# The command line is rendered from nixos/service-flags.json (see
# nixos/lib/flags.nix), the same map the local vmtests harness uses.
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

  cfg = config.services.nixfleet-control-plane;
  flags = import ../lib/flags.nix;
  service = "nixfleet-control-plane";
  default = flags.default service;
  # An option whose default is the one in nixos/service-flags.json.
  option = flags.option lib service;

  settingsFormat = pkgs.formats.toml { };

  # The TOML file the binary reads: an explicit configFile wins, otherwise the
  # rendered `settings` (or nothing when settings is empty).
  effectiveConfigFile =
    if cfg.configFile != null then
      cfg.configFile
    else if cfg.settings != { } then
      settingsFormat.generate "nixfleet-control-plane.toml" cfg.settings
    else
      null;

  values = flags.valuesFrom service cfg // {
    configFile = effectiveConfigFile;
  };

  usesPostgres = cfg.logBackend == "postgres";
  # The database runs on this host: the unit starts after it (and wants it).
  localPostgres = usesPostgres && (config.services.postgresql.enable or false);
  # The URL may come only from environmentFile (NIXFLEET_CP_LOG_POSTGRES_URL=...), which
  # the build sandbox cannot read: --check-config then validates with a stand-in URL (it
  # parses the flags and connects to nothing).
  checkValues =
    values
    // lib.optionalAttrs (usesPostgres && cfg.postgresUrl == null) {
      postgresUrl = "postgres://check-config@localhost/nixfleet";
    };

  argv = flags.args {
    inherit service values;
    credentialDir = "%d";
  };

  # Same argv as the unit, with %d spelled out: --check-config validates
  # without reading files, so the credential paths only need to be well formed.
  checkArgv = flags.args {
    inherit service;
    values = checkValues;
    credentialDir = "/run/credentials/nixfleet-control-plane.service";
  };

  port =
    let
      m = builtins.match ".*:([0-9]+)" cfg.listen;
    in
    if m == null then null else lib.toInt (builtins.head m);

  lowPort = port != null && port < 1024;

  isStorePath = p: p != null && (builtins.isPath p || lib.hasPrefix builtins.storeDir (toString p));

  stateDirName = lib.removePrefix "/var/lib/" cfg.dataDir;

  # Build-time check: the binary parses and validates its own configuration.
  checkedConfig =
    pkgs.runCommand "nixfleet-control-plane-config-checked"
      {
        nativeBuildInputs = [ cfg.package ];
        preferLocalBuild = true;
      }
      ''
        ${lib.escapeShellArgs ([ (lib.getExe' cfg.package "nixfleet-control-plane") ] ++ checkArgv ++ [ flags.checkConfigFlag ])}
        touch $out
      '';
in
{
  options.services.nixfleet-control-plane = {
    enable = mkEnableOption "the nixfleet control plane";

    package = mkPackageOption pkgs "nixfleet-control-plane" { };

    listen = mkOption {
      type = types.str;
      default = default "listen";
      example = "[::]:8443";
      description = "Address and port (`HOST:PORT`) the HTTPS API listens on.";
    };

    dataDir = mkOption {
      type = types.str;
      default = default "dataDir";
      description = ''
        Directory holding the event log. Must be under /var/lib (it is the
        unit's StateDirectory, owned by the dynamic user).
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP port of `listen` in the firewall.";
    };

    tls = {
      cert = mkOption {
        type = types.nullOr types.str;
        default = default "tls.cert";
        example = "/etc/nixfleet/cp-cert.pem";
        description = "Server certificate (PEM), passed to the unit with LoadCredential.";
      };
      key = mkOption {
        type = types.nullOr types.str;
        default = default "tls.key";
        example = "/run/secrets/nixfleet-cp-key.pem";
        description = ''
          Server private key (PEM), passed with LoadCredential. Must not be a
          store path: the store is world-readable.
        '';
      };
      clientCa = mkOption {
        type = types.nullOr types.str;
        default = default "tls.clientCa";
        description = ''
          CA (PEM) whose certificates agents and operators must present
          (mutual TLS). Passed with LoadCredential.
        '';
      };
    };

    insecure = option "insecure" types.bool "Serve plain HTTP without TLS. For tests only.";

    logFormat = option "logFormat" (types.enum [
      "human"
      "json"
    ]) "Log line format on stderr (the journal).";

    configFile = mkOption {
      type = types.nullOr types.path;
      default = default "configFile";
      description = ''
        TOML configuration file. When null and `settings` is not empty, the
        file is generated from `settings`.
      '';
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = {
        executor.tick_interval_ms = 2000;
      };
      description = ''
        Control plane configuration, rendered to TOML and passed with
        `--config` (RFC 42 style). See docs/nixos.md.
      '';
    };

    logBackend = option "logBackend" (types.nullOr (
      types.enum [
        "sled"
        "postgres"
      ]
    )) "Where the event log lives: `\"sled\"` (embedded, in `dataDir`) or `\"postgres\"` (a PostgreSQL database several control planes share, each serving the API, one at a time running the executor under a fenced lease). `null`: the binary's default, sled.";

    # Lands in the store and on the command line: no password here (see environmentFile).
    postgresUrl = option "postgresUrl" (types.nullOr types.str) "PostgreSQL connection string (URL or libpq `key=value`, e.g. `postgres://nixfleet@db:5432/nixfleet`) for `logBackend = \"postgres\"`. It lands in the Nix store and on the unit's command line: use trust, peer or certificate authentication, or leave this null and set `NIXFLEET_CP_LOG_POSTGRES_URL` in `environmentFile`.";

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/nixfleet-cp.env";
      description = ''
        File of `NAME=value` lines read by systemd when the unit starts (`EnvironmentFile=`),
        outside the store; e.g. `NIXFLEET_CP_LOG_POSTGRES_URL=...` when the database URL holds
        a password. Must not be a store path.
      '';
    };

    cpId = option "cpId" (types.nullOr types.str) "This control plane's name among those sharing a PostgreSQL log, written with every record it appends and in the executor's lease. `null`: host name and port.";

    executorLeaseSeconds = option "executorLeaseSeconds" (types.nullOr (
      types.ints.between 2 3600
    )) "How long the executor's lease lasts unrenewed with a shared log, in seconds: after the control plane holding it dies, another runs the executor within about this time. `null`: the binary's default (6).";

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run `nixfleet-control-plane --check-config` with the final command line
        at build time, so an invalid configuration fails the system build.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = !isStorePath cfg.tls.key;
        message = "services.nixfleet-control-plane.tls.key must not be a store path (the Nix store is world-readable); give the path of a file outside /nix/store.";
      }
      {
        assertion = (cfg.tls.cert == null) == (cfg.tls.key == null);
        message = "services.nixfleet-control-plane: set tls.cert and tls.key together.";
      }
      {
        assertion = cfg.insecure || cfg.tls.cert != null;
        message = "services.nixfleet-control-plane: set tls.cert and tls.key, or insecure = true (tests only).";
      }
      {
        assertion = !usesPostgres || cfg.postgresUrl != null || cfg.environmentFile != null;
        message = "services.nixfleet-control-plane: logBackend = \"postgres\" needs postgresUrl (e.g. postgres://nixfleet@db:5432/nixfleet), or environmentFile setting NIXFLEET_CP_LOG_POSTGRES_URL.";
      }
      {
        assertion = usesPostgres || (cfg.postgresUrl == null && cfg.cpId == null && cfg.executorLeaseSeconds == null);
        message = "services.nixfleet-control-plane: postgresUrl, cpId and executorLeaseSeconds apply to logBackend = \"postgres\" only; set it.";
      }
      {
        assertion = !isStorePath cfg.environmentFile;
        message = "services.nixfleet-control-plane.environmentFile must not be a store path (the Nix store is world-readable).";
      }
      {
        assertion = port != null;
        message = "services.nixfleet-control-plane.listen must be HOST:PORT, got ${cfg.listen}.";
      }
      {
        assertion = lib.hasPrefix "/var/lib/" cfg.dataDir && stateDirName != "" && !lib.hasInfix "/" stateDirName;
        message = "services.nixfleet-control-plane.dataDir must be a directory directly under /var/lib (it is the unit's StateDirectory), got ${cfg.dataDir}.";
      }
    ];

    networking.firewall.allowedTCPPorts = mkIf (cfg.openFirewall && port != null) [ port ];

    # Referencing the checked marker makes the system build depend on the check.
    system.extraDependencies = mkIf cfg.checkConfig [ checkedConfig ];

    systemd.services.nixfleet-control-plane = {
      description = "nixfleet control plane";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ] ++ lib.optional localPostgres "postgresql.service";
      after = [ "network-online.target" ] ++ lib.optional localPostgres "postgresql.service";

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = flags.execLine (lib.getExe' cfg.package "nixfleet-control-plane") argv;
        Restart = "on-failure";
        RestartSec = "5s";

        LoadCredential = flags.credentials { inherit service values; };
        EnvironmentFile = mkIf (cfg.environmentFile != null) cfg.environmentFile;

        DynamicUser = true;
        StateDirectory = stateDirName;
        StateDirectoryMode = "0700";
        WorkingDirectory = cfg.dataDir;
        UMask = "0077";

        # Hardening: the control plane needs the network, its state directory
        # and nothing else.
        CapabilityBoundingSet = if lowPort then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        AmbientCapabilities = lib.optionals lowPort [ "CAP_NET_BIND_SERVICE" ];
        DeviceAllow = [ "" ];
        DevicePolicy = "closed";
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        NoNewPrivileges = true;
        PrivateDevices = true;
        PrivateMounts = true;
        PrivateTmp = true;
        PrivateUsers = !lowPort;
        ProcSubset = "pid";
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHome = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProtectSystem = "strict";
        RemoveIPC = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          "~@resources"
        ];
      };
    };
  };
}
