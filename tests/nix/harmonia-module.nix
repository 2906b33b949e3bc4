# nixpkgs' harmonia module as nixpkgs has it since harmonia 3 (services.harmonia.cache.*),
# for tests/nix/eval.nix: the options with nixpkgs' types, the renames from the flat layout,
# and the parts of its `config` nixfleet relies on (docs/nixos.md quotes the nixpkgs lines):
# settings defaults by mkDefault, a socket on `settings.bind`, each key a systemd
# credential `sign-key-<i>` named in SIGN_KEY_PATHS, Type=notify, a dynamic user.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.services.harmonia;
  format = pkgs.formats.toml { };
  keys = cfg.cache.signKeyPaths ++ lib.optional (cfg.cache.signKeyPath != null) cfg.cache.signKeyPath;
  credentials = lib.imap0 (i: path: { id = "sign-key-${toString i}"; inherit path; }) keys;
  renamed = name: lib.mkRenamedOptionModule [ "services" "harmonia" name ] [ "services" "harmonia" "cache" name ];
in
{
  imports = map renamed [ "enable" "signKeyPath" "signKeyPaths" "settings" ];

  options.services.harmonia = {
    package = mkOption { type = types.package; default = pkgs.harmonia; };
    cache = {
      enable = lib.mkEnableOption "Harmonia: Nix binary cache written in Rust";
      settings = mkOption { inherit (format) type; default = { }; };
      signKeyPath = mkOption { type = types.nullOr types.path; default = null; };
      signKeyPaths = mkOption { type = types.listOf types.path; default = [ ]; };
    };
  };

  config = lib.mkIf cfg.cache.enable {
    services.harmonia.cache.settings = builtins.mapAttrs (_: lib.mkDefault) {
      bind = "[::]:5000";
      max_connection_rate = 256;
      priority = 50;
      workers = 4;
    };
    systemd.sockets.harmonia = {
      wantedBy = [ "sockets.target" ];
      socketConfig.ListenStream = cfg.cache.settings.bind;
    };
    systemd.services.harmonia = {
      description = "harmonia binary cache service";
      requires = [ "harmonia.socket" ];
      after = [ "harmonia.socket" ];
      environment = {
        CONFIG_FILE = format.generate "harmonia.toml" cfg.cache.settings;
        SIGN_KEY_PATHS = lib.concatMapStringsSep " " (c: "%d/${c.id}") credentials;
      };
      serviceConfig = {
        Type = "notify";
        WatchdogSec = 15;
        ExecStart = lib.getExe cfg.package;
        DynamicUser = true;
        User = "harmonia";
        Group = "harmonia";
        LoadCredential = map (c: "${c.id}:${c.path}") credentials;
        Restart = "on-failure";
      };
    };
  };
}
