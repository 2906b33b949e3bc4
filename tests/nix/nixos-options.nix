# The NixOS options nixfleet's modules (and the vmtests node helpers) read or set,
# declared with the real nixpkgs `lib.types` as nixpkgs declares them, so that
# `lib.evalModules` type-checks, merges and prioritises our definitions as NixOS does.
#
# Why it exists: this machine has nixpkgs' lib (../shared/nixpkgs-lib) but not
# nixpkgs' NixOS modules. Each declaration names the nixpkgs file it copies; only
# the options we touch are here, with nixpkgs' type, default and merge function.
# The flake's `nixos-option-types` check compares these types with a real NixOS
# evaluation (`lib.nixosSystem`), so a drift from nixpkgs fails there.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;

  opt = type: default: mkOption { inherit type default; };
  optNoDefault = type: mkOption { inherit type; };

  # nixos/lib/systemd-lib.nix: checkUnitConfig, assertValueOneOf.
  checkUnitConfig =
    group: checks: attrs:
    let
      defs = lib.mapAttrs (
        _: v:
        if v._type or "" == "override" then
          v.content
        else if v._type or "" == "if" then
          v.content
        else
          v
      ) attrs;
      errors = lib.concatMap (c: c group defs) checks;
    in
    if errors == [ ] then true else builtins.trace (lib.concatStringsSep "\n" errors) false;
  assertValueOneOf =
    name: values: group: attr:
    lib.optional (
      attr ? ${name} && !lib.elem attr.${name} values
    ) "Systemd ${group} field `${name}' cannot have value `${toString attr.${name}}'.";

  # nixos/lib/systemd-unit-options.nix: unitOption and checkService.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };
  checkService = checkUnitConfig "Service" [
    (assertValueOneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ])
    (assertValueOneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ])
  ];
  unitNames = opt (types.listOf types.str) [ ];
  unitConfigOption = opt (types.attrsOf unitOption) { };

  # nixos/lib/systemd-unit-options.nix: the options of a service unit we use.
  serviceOptions = {
    options = lib.genAttrs [
      "wantedBy"
      "requiredBy"
      "wants"
      "requires"
      "after"
      "before"
      "aliases"
    ] (_: unitNames)
    // {
      enable = opt types.bool true;
      description = opt types.singleLineStr "";
      unitConfig = unitConfigOption;
      startLimitIntervalSec = mkOption { type = types.int; };
      environment = opt (types.attrsOf (
        types.nullOr (
          types.oneOf [
            types.str
            types.path
            types.package
          ]
        )
      )) { };
      path = opt (types.listOf (
        types.oneOf [
          types.package
          types.str
        ]
      )) [ ];
      serviceConfig = opt (types.addCheck (types.attrsOf unitOption) checkService) { };
      script = opt types.lines "";
      preStart = opt types.lines "";
      restartIfChanged = opt types.bool true;
      stopIfChanged = opt types.bool true;
    };
  };
  timerOptions.options = {
    wantedBy = unitNames;
    timerConfig = unitConfigOption;
  };
  socketOptions.options = {
    wantedBy = unitNames;
    socketConfig = unitConfigOption;
  };

  # nixos/modules/config/users-groups.nix (the user options we use).
  userOptions = {
    options = {
      isNormalUser = opt types.bool false;
      isSystemUser = opt types.bool false;
      extraGroups = opt (types.listOf types.str) [ ];
      group = opt types.str "";
      shell = opt (types.nullOr (types.either types.shellPackage (types.passwdEntry types.path))) null;
      openssh.authorizedKeys.keys = opt (types.listOf types.singleLineStr) [ ];
      openssh.authorizedKeys.keyFiles = opt (types.listOf types.path) [ ];
    };
  };
  groupOptions.options = {
    gid = opt (types.nullOr types.int) null;
    members = opt (types.listOf (types.passwdEntry types.str)) [ ];
  };

  # nixos/modules/system/etc/etc.nix.
  etcOptions =
    { name, config, ... }:
    {
      options = {
        enable = opt types.bool true;
        target = opt types.str name;
        text = opt (types.nullOr types.lines) null;
        source = optNoDefault types.path;
        mode = opt types.str "symlink";
      };
      config.source = lib.mkIf (config.text != null) (lib.mkDefault (pkgs.writeText "etc-${name}" config.text));
    };

  # nixos/modules/config/nix.nix: nix.settings is a freeform submodule of nix.conf atoms.
  confAtom =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        types.package
      ]
    )
    // {
      description = "Nix config atom (null, bool, int, float, str, path or package)";
    };
  nixSettings = {
    freeformType = types.attrsOf (types.either confAtom (types.listOf confAtom));
    options = {
      substituters = opt (types.listOf types.str) [ ];
      trusted-public-keys = opt (types.listOf types.str) [ ];
      secret-key-files = opt (types.listOf types.str) [ ];
      experimental-features = opt (types.listOf types.str) [ ];
      sandbox = opt (types.either types.bool (types.enum [ "relaxed" ])) true;
      require-sigs = opt types.bool true;
    };
  };

  # nixos/modules/services/monitoring/prometheus/exporters.nix (mkExporterOpts) and exporters/node.nix.
  nodeExporterOptions = {
    enable = lib.mkEnableOption "the prometheus node exporter";
    port = opt types.port 9100;
    listenAddress = opt types.str "0.0.0.0";
    openFirewall = opt types.bool false;
    enabledCollectors = opt (types.listOf types.str) [ ];
    disabledCollectors = opt (types.listOf types.str) [ ];
  };

  enableOnly = what: { enable = lib.mkEnableOption what; };
in
{
  options = {
    # nixos/modules/misc/assertions.nix
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
    };
    warnings = opt (types.listOf types.str) [ ];

    systemd = {
      package = optNoDefault types.package;
      services = opt (types.attrsOf (types.submodule serviceOptions)) { };
      timers = opt (types.attrsOf (types.submodule timerOptions)) { };
      sockets = opt (types.attrsOf (types.submodule socketOptions)) { };
    };

    users.users = opt (types.attrsOf (types.submodule userOptions)) { };
    users.groups = opt (types.attrsOf (types.submodule groupOptions)) { };

    environment = {
      etc = opt (types.attrsOf (types.submodule etcOptions)) { };
      systemPackages = opt (types.listOf types.package) [ ];
      defaultPackages = opt (types.listOf types.package) [ ];
      extraInit = opt types.lines "";
    };

    networking = {
      hostName = opt (types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$") "nixos";
      # nixos/modules/services/networking/firewall.nix and firewall-nftables.nix
      firewall = {
        enable = opt types.bool true;
        allowedTCPPorts = opt (types.listOf types.port) [ ];
        logRefusedConnections = opt types.bool true;
        logReversePathDrops = opt types.bool false;
        extraInputRules = opt types.lines "";
      };
      # nixos/modules/services/networking/nftables.nix
      nftables.enable = opt types.bool false;
      # nixos/modules/services/networking/networkmanager.nix
      networkmanager.enable = opt types.bool false;
      networkmanager.unmanaged = opt (types.listOf types.str) [ ];
    };

    nix = {
      package = optNoDefault types.package;
      settings = opt (types.submodule nixSettings) { };
      extraOptions = opt types.lines "";
      gc = {
        automatic = opt types.bool false;
        dates = opt (types.either types.singleLineStr (types.listOf types.str)) [ "03:15" ];
        options = opt types.str "";
      };
    };

    # nixos/modules/services/networking/ssh/sshd.nix
    services.openssh = {
      enable = opt types.bool false;
      ports = opt (types.listOf types.port) [ 22 ];
      openFirewall = opt types.bool true;
      settings = opt (types.submodule {
        freeformType = types.attrsOf (types.nullOr (types.oneOf [ types.bool types.int types.str (types.listOf types.str) ]));
        options = {
          PermitRootLogin = opt (types.enum [
            "yes"
            "without-password"
            "prohibit-password"
            "forced-commands-only"
            "no"
          ]) "prohibit-password";
          PasswordAuthentication = opt types.bool true;
          KbdInteractiveAuthentication = opt types.bool true;
        };
      }) { };
    };
    services.prometheus.exporters.node = nodeExporterOptions;
    # nixos/modules/services/databases/postgresql.nix (the options we use).
    services.postgresql = {
      enable = lib.mkEnableOption "PostgreSQL Server";
      enableTCPIP = opt types.bool false;
      authentication = opt types.lines "";
      ensureDatabases = opt (types.listOf types.str) [ ];
      ensureUsers = opt (types.listOf (
        types.submodule {
          options.name = optNoDefault types.str;
          options.ensureDBOwnership = opt types.bool false;
        }
      )) [ ];
    };
    services.xserver = enableOnly "the X server";

    programs.zsh = enableOnly "zsh";
    programs.ssh.extraConfig = opt types.lines "";
    documentation.enable = opt types.bool true;
    virtualisation.docker = enableOnly "docker";
    # nixos/modules/virtualisation/qemu-vm.nix (test VMs only)
    virtualisation.memorySize = opt types.ints.positive 1024;

    system = {
      extraDependencies = opt (types.listOf types.pathInStore) [ ];
      # nixos/modules/system/activation/activation-script.nix
      activationScripts = opt (types.attrsOf (
        types.either types.str (
          types.submodule {
            options.deps = opt (types.listOf types.str) [ ];
            options.text = optNoDefault types.lines;
          }
        )
      )) { };
      # nixos/modules/system/activation/pre-switch-check.nix
      preSwitchChecks = opt (types.attrsOf types.str) { };
      nixos.tags = opt (types.listOf types.str) [ ];
    };

    # nixos/modules/system/activation/specialisation.nix: each is a module extending this one.
    specialisation = opt (types.attrsOf (
      types.submodule {
        options.inheritParentConfig = opt types.bool true;
        options.configuration = opt types.deferredModule { };
      }
    )) { };
  };

  config = {
    # nixos/modules/services/networking/firewall-nftables.nix: its own assertions.
    assertions = [ ];
  };
}
