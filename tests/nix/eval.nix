# Evaluates nixfleet's NixOS modules with the real module system: nixpkgs' `lib.evalModules`
# with the NixOS options they touch declared as nixpkgs declares them (nixos-options.nix).
# Used by tests/nix/test_nix.py; `lib` is nixpkgs' lib (../shared/nixpkgs-lib by default).
#
#   import ./eval.nix { lib; modules = [ ... ]; harmoniaLayout = "cache" | "flat"; }
#
# gives { config; options; failedAssertions; view; stats; nixfleetOptions; } where `view` is the
# part of `config` the tests read, with every value forced through its option's type.
{
  lib,
  modules ? [ ],
  # "cache": services.harmonia.cache.* (nixpkgs since harmonia 3); "flat": the older
  # services.harmonia.{enable,signKeyPaths,settings} the cache-server module also follows.
  harmoniaLayout ? "cache",
  withNixfleet ? true,
}:
let
  pkgs = import ./pkgs.nix { inherit lib; };

  host = {
    _module.args = { inherit pkgs; };
    networking.hostName = lib.mkDefault "web-01";
    nix.package = pkgs.nix;
    systemd.package = pkgs.systemd;
  };

  eval = lib.evalModules {
    modules = [
      ./nixos-options.nix
      (if harmoniaLayout == "cache" then ./harmonia-module.nix else ./harmonia-flat-module.nix)
      host
    ]
    ++ lib.optional withNixfleet ../../nixos
    ++ modules;
  };
  inherit (eval) config options;

  # Every option of the evaluation, with its declarations and definitions.
  allOptions = lib.collect lib.isOption (removeAttrs options [ "_module" ]);
  isOurs = o: lib.hasPrefix "services.nixfleet-" (lib.showOption o.loc) || lib.head o.loc == "nixfleet";

  serviceView = lib.mapAttrs (_: s: removeAttrs s [ "startLimitIntervalSec" ]);
in
{
  inherit eval config options pkgs;

  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  # Dotted names of nixfleet's own options (submodule options as `<list>.*.<name>`), as
  # lib.optionAttrSetToDocList names them for the NixOS manual.
  nixfleetOptions = map (o: o.name) (
    lib.filter (
      o: !(o.internal or false) && (lib.hasPrefix "services.nixfleet-" o.name || lib.hasPrefix "nixfleet." o.name)
    ) (lib.optionAttrSetToDocList options)
  );

  # Options declared by one file (a path under nixos/).
  declaredBy =
    file:
    map (o: o.name) (
      lib.filter (o: lib.elem (toString file) (map toString o.declarations)) (lib.optionAttrSetToDocList options)
    );

  view = {
    inherit (config)
      assertions
      warnings
      users
      environment
      networking
      nix
      ;
    # Not the renamed flat harmonia options: reading an alias warns, as on NixOS.
    # The nixfleet services that are off are left out: their required options are unset.
    services =
      lib.filterAttrs (n: v: !(lib.hasPrefix "nixfleet-" n) || v.enable) config.services
      // lib.optionalAttrs (harmoniaLayout == "cache") {
        harmonia = { inherit (config.services.harmonia) cache package; };
      };
    systemd = {
      services = serviceView config.systemd.services;
      inherit (config.systemd) timers sockets;
    };
    system = {
      inherit (config.system) preSwitchChecks activationScripts;
      extraDependencies = map toString config.system.extraDependencies;
    };
  };

  # How much the real module system checked: every option of the evaluation whose value
  # was forced through its type, and the definitions merged into those values.
  stats =
    let
      defined = lib.filter (o: o.isDefined) allOptions;
      # deepSeq, except into packages and into the one unit option that NixOS reads only
      # when it is defined (startLimitIntervalSec has no default, as in nixpkgs).
      force =
        v:
        if builtins.isAttrs v && (v.type or null) != "derivation" then
          lib.foldl' (acc: n: if n == "startLimitIntervalSec" then acc else builtins.seq (force v.${n}) acc) true (
            lib.attrNames v
          )
        else if builtins.isList v then
          lib.foldl' (acc: x: builtins.seq (force x) acc) true v
        else
          true;
      forced = map (o: builtins.seq (force o.value) o) defined;
    in
    {
      options = lib.length forced;
      definitions = lib.foldl' (n: o: n + lib.length o.definitions) 0 forced;
      nixfleetOptions = lib.length (lib.filter isOurs forced);
    };
}
