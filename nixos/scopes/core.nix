# nixfleet.core: what every fleet machine has (the "core" scope).
#
# Why it exists: a fleet is only manageable when every machine can be reached
# and inspected the same way: sshd with keys only, a firewall that is on
# (nftables, so the firewall scope's rules and `nft list ruleset` work the same
# everywhere), flakes enabled for the CLI's builds, and the same basic tools.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkDefault mkEnableOption mkIf mkOption types;
  cfg = config.nixfleet.core;
in
{
  options.nixfleet.core = {
    enable = mkEnableOption "the nixfleet core scope (sshd, NetworkManager, firewall, zsh and git)";

    userName = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "alice";
      description = "A normal user in the wheel group with zsh as login shell (none when null).";
    };

    gc.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Weekly `nix-collect-garbage` that deletes only unreachable paths. It
        never deletes profile generations: a rollout revert or an agent rollback
        may need any of them, and a cache may not have them.
      '';
    };
  };

  config = mkIf cfg.enable {
    services.openssh = {
      enable = true;
      settings = {
        PermitRootLogin = mkDefault "prohibit-password";
        PasswordAuthentication = mkDefault false;
        KbdInteractiveAuthentication = mkDefault false;
      };
    };

    networking.networkmanager.enable = mkDefault true;
    networking.firewall.enable = true;
    networking.nftables.enable = mkDefault true;

    programs.zsh.enable = true;
    environment.systemPackages = [
      pkgs.git
      pkgs.zsh
    ];

    nix.settings.experimental-features = [
      "nix-command"
      "flakes"
    ];

    nix.gc = mkIf cfg.gc.enable {
      automatic = true;
      dates = "weekly";
      options = "";
    };

    users.users = mkIf (cfg.userName != null) {
      ${cfg.userName} = {
        isNormalUser = true;
        extraGroups = [ "wheel" ];
        shell = pkgs.zsh;
      };
    };
  };
}
