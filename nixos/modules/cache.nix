# services.nixfleet-cache: makes a host trust and use the fleet's binary cache.
#
# Why it exists: an agent fetches closures from the cache, and Nix only accepts
# them when the cache is a substituter whose signing key is trusted. One option
# pair keeps the URL and the key together.
{ config, lib, ... }:
let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.services.nixfleet-cache;
in
{
  options.services.nixfleet-cache = {
    enable = mkEnableOption "the fleet binary cache as a substituter";

    cacheUrl = mkOption {
      type = types.str;
      example = "http://cache:5000";
      description = "URL of the fleet cache.";
    };

    publicKey = mkOption {
      type = types.str;
      example = "cache-1:AAAA...=";
      description = "Public key of the cache's signing key (`name:base64`).";
    };
  };

  config = mkIf cfg.enable {
    nix.settings.substituters = [ cfg.cacheUrl ];
    nix.settings.trusted-public-keys = [ cfg.publicKey ];
  };
}
