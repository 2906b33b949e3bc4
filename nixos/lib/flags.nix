# Renders the command lines of nixfleet-control-plane and nixfleet-agent from
# nixos/service-flags.json.
#
# Why this file exists: the NixOS modules and the local vmtests harness both
# start the binaries, and they must start them identically. Both read the same
# JSON map; this file is the Nix half. It uses builtins only (no nixpkgs lib),
# so tests/nix can evaluate it on a machine without nixpkgs.
let
  spec = builtins.fromJSON (builtins.readFile ../service-flags.json);

  concatMap = f: list: builtins.concatLists (map f list);

  # "tls.cert" -> [ "tls" "cert" ]
  splitName = name: builtins.filter builtins.isString (builtins.split "\\." name);

  # One option's argv fragment. `value` is the option's value as the module
  # holds it; null means "not set", and renders nothing.
  renderOne =
    { name, option, value, credentialDir }:
    let
      flag = option.flag;
      type = option.type;
      credential = option.credential or null;
    in
    if value == null then
      [ ]
    else if type == "bool" then
      (if value then [ flag ] else [ ])
    else if type == "int" then
      [ flag (toString value) ]
    else if type == "commaList" then
      (if value == [ ] then [ ] else [ flag (builtins.concatStringsSep "," value) ])
    else if type == "path" && credential != null && credentialDir != null then
      [ flag "${credentialDir}/${credential}" ]
    else if type == "str" || type == "path" then
      [ flag (toString value) ]
    else
      throw "nixos/service-flags.json: option ${name} has unknown type ${type}";
in
rec {
  inherit spec splitName;

  # The option names (dotted, as in the JSON) of one service, sorted.
  optionNames = service: builtins.attrNames spec.${service}.options;

  # The default value of one option, as written in the JSON.
  default = service: name: spec.${service}.options.${name}.default;

  # A module option of `service` whose default is the one in the JSON. The
  # modules pass nixpkgs' lib (this file itself needs none).
  option =
    lib: service: name: type: description:
    lib.mkOption {
      inherit type description;
      default = default service name;
    };

  # Reads an option's value out of a module's `cfg`, following dots
  # ("tls.cert" -> cfg.tls.cert). A missing option is an evaluation error on
  # purpose: the JSON names an option the module does not declare.
  valueOf =
    cfg: name:
    builtins.foldl' (
      acc: part:
      if builtins.hasAttr part acc then
        acc.${part}
      else
        throw "nixos/service-flags.json names option ${name}, which the module does not declare"
    ) cfg (splitName name);

  # The values of every JSON option of `service`, read from `cfg`.
  valuesFrom =
    service: cfg:
    builtins.listToAttrs (
      map (name: {
        inherit name;
        value = valueOf cfg name;
      }) (optionNames service)
    );

  # argv (without the program) for `service` given `values`, an attrset keyed
  # by dotted option name. Options whose JSON entry has a "credential" render
  # as "${credentialDir}/<credential>" when credentialDir is not null (systemd
  # LoadCredential; "%d" in a unit).
  args =
    {
      service,
      values,
      credentialDir ? null,
    }:
    concatMap (
      name:
      renderOne {
        inherit name credentialDir;
        option = spec.${service}.options.${name};
        value = values.${name} or null;
      }
    ) (optionNames service);

  # LoadCredential= entries ("id:path") for the options of `service` that are
  # passed as systemd credentials and are set.
  credentials =
    { service, values }:
    concatMap (
      name:
      let
        option = spec.${service}.options.${name};
        value = values.${name} or null;
      in
      if (option.credential or null) != null && value != null then
        [ "${option.credential}:${toString value}" ]
      else
        [ ]
    ) (optionNames service);

  # The flag that asks the control plane to validate its configuration and exit.
  checkConfigFlag = spec.nixfleet-control-plane.checkConfigFlag;

  # Quotes one argument for an ExecStart= line (systemd's own quoting rules:
  # double quotes, backslash escapes, "%" and "$" doubled so systemd leaves
  # them alone). Arguments made only of safe characters stay bare.
  escapeSystemdArg =
    arg:
    let
      s = toString arg;
      safe = builtins.match "[A-Za-z0-9_./:,=@+-]+" s != null;
      escaped =
        builtins.replaceStrings
          [ "\\" "\"" "%" "$" "\n" ]
          [ "\\\\" "\\\"" "%%" "$$" "\\n" ]
          s;
    in
    if safe then s else "\"${escaped}\"";

  # One ExecStart= line: program plus args, every argument quoted for systemd.
  # "%d" (the credentials directory specifier) must survive, so credential
  # paths are rendered after quoting.
  execLine =
    program: argv:
    builtins.concatStringsSep " " (
      [ (escapeSystemdArg program) ]
      ++ map (a: if builtins.match "%d/[A-Za-z0-9_.-]+" a != null then a else escapeSystemdArg a) argv
    );
}
