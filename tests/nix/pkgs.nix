# Stand-ins for the few nixpkgs packages and builders nixfleet's modules name, for
# evaluating them with the real module system (tests/nix/eval.nix) on a machine that has
# nixpkgs' lib but no nixpkgs.
#
# Why: the modules only pass packages around (ExecStart paths, PATH entries,
# environment.systemPackages), so a package here is a derivation-shaped attrset
# (`type = "derivation"`, so `lib.types.package` accepts it) with a fake store path.
# Builders return their arguments, so tests can read back what a module asked to build.
# `lib` is the real nixpkgs lib; nothing of the module system is imitated here.
{ lib }:
let
  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";
  package =
    name: extra:
    {
      type = "derivation";
      inherit name;
      pname = name;
      outPath = storePath name;
      drvPath = storePath "${name}.drv";
      meta.mainProgram = name;
    }
    // extra;
  built = name: attrs: package name attrs;

  # pkgs/pkgs-lib/formats.nix: toml's value type (what `settings` options accept).
  tomlFormat = _: {
    type =
      let
        valueType =
          lib.types.nullOr (
            lib.types.oneOf [
              lib.types.bool
              lib.types.int
              lib.types.float
              lib.types.str
              lib.types.path
              (lib.types.attrsOf valueType)
              (lib.types.listOf valueType)
            ]
          )
          // {
            description = "TOML value";
          };
      in
      valueType;
    generate = name: value: built name { passthru.value = value; };
  };

  self = {
    inherit lib;
    formats.toml = tomlFormat;
    runCommand = name: env: script: built name { inherit env script; };
    writeShellScript = name: text: built name { inherit text; };
    writeText = name: text: built name { inherit text; };
    writeTextFile = { name, text, ... }@args: built name args;
    stdenv.hostPlatform.system = "x86_64-linux";
    # buildRustPackage returns its arguments, so tests can read them back.
    rustPlatform.buildRustPackage =
      attrs:
      package "${attrs.pname}-${attrs.version}" attrs
      // {
        overrideAttrs = f: attrs // (if builtins.isFunction f then f attrs else f);
      };
    callPackage =
      fn: extra:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) self // extra);
    zsh = package "zsh" { shellPath = "/bin/zsh"; };
  }
  // lib.genAttrs [
    "coreutils"
    "curl"
    "restic"
    "borgbackup"
    "openssh"
    "git"
    "python3"
    "openssl"
    "jq"
    "harmonia"
    "nix"
    "systemd"
    "nixfleet"
    "nixfleet-agent"
    "nixfleet-control-plane"
  ] (n: package n { });
in
self
