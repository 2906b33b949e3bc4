# nixfleet.backup: a scheduled backup with a machine-readable outcome (the
# "backup" scope).
#
# Why it exists: a backup nobody can check is not a backup. Every run, whatever
# the backend, ends by writing <stateDirectory>/status.json
# ({"status": "success" | "failure", "lastRun", "hostname"}), which monitoring
# and the VM tests read, and optionally pings a health check URL.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.nixfleet.backup;
  esc = lib.escapeShellArg;
  excludeArgs = flag: lib.concatMapStringsSep " " (e: "${flag} ${esc e}") cfg.exclude;
  paths = lib.concatMapStringsSep " " esc cfg.paths;
  backendPackages =
    lib.optional (cfg.backend == "restic") pkgs.restic ++ lib.optional (cfg.backend == "borgbackup") pkgs.borgbackup;

  # A string option that is unset (null) unless given.
  optionalStr =
    description:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      inherit description;
    };

  # How many archives of one period are kept.
  retentionOption =
    default: description:
    mkOption {
      type = types.ints.unsigned;
      inherit default description;
    };

  keep = flagPrefix: ''${flagPrefix}daily ${toString cfg.retention.daily} ${flagPrefix}weekly ${toString cfg.retention.weekly} ${flagPrefix}monthly ${toString cfg.retention.monthly}'';

  backendScript =
    if cfg.backend == "restic" then
      ''
        export RESTIC_REPOSITORY=${esc cfg.restic.repository}
        export RESTIC_PASSWORD_FILE=${esc cfg.restic.passwordFile}
        restic backup ${excludeArgs "--exclude"} ${paths}
        restic forget --prune ${keep "--keep-"}
      ''
    else if cfg.backend == "borgbackup" then
      ''
        export BORG_REPO=${esc cfg.borgbackup.repository}
        export BORG_PASSCOMMAND=${esc "cat ${cfg.borgbackup.passphraseFile}"}
        borg create ${excludeArgs "--exclude"} "::{hostname}-{now:%Y-%m-%dT%H:%M:%S}" ${paths}
        borg prune ${keep "--keep-"}
      ''
    else
      ''
        echo "nixfleet-backup: no backend configured; hooks only"
      '';

  # Runs after every run (ExecStopPost), success or not.
  statusScript = pkgs.writeShellScript "nixfleet-backup-status" ''
    set -eu
    if [ "''${SERVICE_RESULT:-}" = success ] && [ "''${EXIT_STATUS:-0}" = 0 ]; then
      status=success; ping=${esc (toString cfg.healthCheck.onSuccess)}
    else
      status=failure; ping=${esc (toString cfg.healthCheck.onFailure)}
    fi
    dir=${esc cfg.stateDirectory}
    mkdir -p "$dir"
    printf '{"status": "%s", "lastRun": "%s", "hostname": "%s"}\n' \
      "$status" "$(${pkgs.coreutils}/bin/date -u +%Y-%m-%dT%H:%M:%SZ)" "$(cat /proc/sys/kernel/hostname)" > "$dir/status.json.tmp"
    mv "$dir/status.json.tmp" "$dir/status.json"
    if [ -n "$ping" ]; then ${pkgs.curl}/bin/curl -fsS -m 10 --retry 3 "$ping" >/dev/null || true; fi
  '';
in
{
  options.nixfleet.backup = {
    enable = mkEnableOption "scheduled backups (the backup scope)";

    backend = mkOption {
      type = types.nullOr (
        types.enum [
          "restic"
          "borgbackup"
        ]
      );
      default = null;
      description = "Backup tool; null runs only the hooks (and still records the outcome).";
    };

    paths = mkOption {
      type = types.listOf types.str;
      default = [ "/persist" ];
      description = "Paths to back up.";
    };

    exclude = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Patterns to leave out.";
    };

    schedule = mkOption {
      type = types.str;
      default = "daily";
      description = "systemd OnCalendar= expression.";
    };

    retention = {
      daily = retentionOption 7 "Daily archives kept.";
      weekly = retentionOption 4 "Weekly archives kept.";
      monthly = retentionOption 6 "Monthly archives kept.";
    };

    healthCheck = {
      onSuccess = optionalStr "URL fetched after a successful run.";
      onFailure = optionalStr "URL fetched after a failed run.";
    };

    preHook = mkOption {
      type = types.lines;
      default = "";
      description = "Shell run before the backup.";
    };

    postHook = mkOption {
      type = types.lines;
      default = "";
      description = "Shell run after a successful backup.";
    };

    stateDirectory = mkOption {
      type = types.str;
      default = "/var/lib/nixfleet-backup";
      description = "Where status.json is written.";
    };

    restic = {
      repository = optionalStr "restic repository (already initialised).";
      passwordFile = optionalStr "File holding the restic repository password.";
    };

    borgbackup = {
      repository = optionalStr "borg repository (already initialised).";
      passphraseFile = optionalStr "File holding the borg passphrase.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.backend != "restic" || (cfg.restic.repository != null && cfg.restic.passwordFile != null);
        message = "nixfleet.backup: the restic backend needs restic.repository and restic.passwordFile.";
      }
      {
        assertion =
          cfg.backend != "borgbackup" || (cfg.borgbackup.repository != null && cfg.borgbackup.passphraseFile != null);
        message = "nixfleet.backup: the borgbackup backend needs borgbackup.repository and borgbackup.passphraseFile.";
      }
    ];

    environment.systemPackages = backendPackages;

    systemd.services.nixfleet-backup = {
      description = "nixfleet backup";
      path = backendPackages;
      script = ''
        set -eu
        ${cfg.preHook}
        ${backendScript}
        ${cfg.postHook}
      '';
      serviceConfig = {
        Type = "oneshot";
        ExecStopPost = "${statusScript}";
      };
    };

    systemd.timers.nixfleet-backup = {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.schedule;
        Persistent = true;
        RandomizedDelaySec = "1h";
      };
    };
  };
}
