# nixfleet.secrets: the machine's SSH host key as its secrets identity (the
# "secrets" scope).
#
# Why it exists: secrets tools (agenix, sops-nix) decrypt with the SSH host
# key, so it must exist, with mode 600, before anything needs it, including on
# a freshly installed or impermanent machine where sshd has not run yet.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.nixfleet.secrets;
in
{
  options.nixfleet.secrets = {
    enable = mkEnableOption "the nixfleet secrets scope (SSH host key as identity)";

    identityPaths.hostKey = mkOption {
      type = types.str;
      default = "/etc/ssh/ssh_host_ed25519_key";
      description = "The host's ed25519 private key, generated when missing.";
    };

    identityPaths.extra = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More identity files secrets tools may decrypt with.";
    };

    resolvedIdentityPaths = mkOption {
      type = types.listOf types.str;
      readOnly = true;
      default = [ cfg.identityPaths.hostKey ] ++ cfg.identityPaths.extra;
      defaultText = lib.literalExpression "[ identityPaths.hostKey ] ++ identityPaths.extra";
      description = "Every identity path, for secrets tools to use.";
    };
  };

  config = mkIf cfg.enable {
    systemd.services.nixfleet-host-key-check = {
      description = "Ensure the SSH host key exists with mode 600";
      wantedBy = [ "multi-user.target" ];
      before = [ "sshd.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      path = [
        pkgs.openssh
        pkgs.coreutils
      ];
      script = ''
        key=${lib.escapeShellArg cfg.identityPaths.hostKey}
        if [ ! -s "$key" ]; then
          mkdir -p "$(dirname "$key")"
          ssh-keygen -q -t ed25519 -N "" -f "$key"
        fi
        chmod 600 "$key"
        if [ -f "$key.pub" ]; then chmod 644 "$key.pub"; fi
      '';
    };
  };
}
