# The NixOS options tests/nix declares (nixos-options.nix, harmonia-module.nix), held against
# another evaluation's options: each must exist there with the same type description, also one
# level into submodules (systemd.services.<name>.serviceConfig, ...). Gives the mismatches as
# lines. The flake's `nixos-option-types` check passes nixpkgs' own NixOS options.
{
  lib,
  # options of an evaluation of tests/nix/eval.nix
  localOptions,
  # options of the evaluation to compare with (a real NixOS system on the flake side)
  otherOptions,
}:
let
  ours =
    path:
    lib.head path == "nixfleet"
    || (lib.length path > 1 && lib.head path == "services" && lib.hasPrefix "nixfleet-" (lib.elemAt path 1));
  # Every option under `set`, with its attribute path in `set`.
  options =
    set: prefix:
    lib.concatLists (
      lib.mapAttrsToList (
        n: v:
        if n == "_module" then
          [ ]
        else if lib.isOption v then
          [ { path = prefix ++ [ n ]; option = v; } ]
        else if builtins.isAttrs v then
          options v (prefix ++ [ n ])
        else
          [ ]
      ) set
    );
  typeOf = o: o.type.description;
  compare =
    name: mine: theirs:
    if theirs == null then
      [ "${name}: nixpkgs declares no such option" ]
    else
      lib.optional (typeOf mine != typeOf theirs) "${name}: nixpkgs has `${typeOf theirs}', tests/nix `${typeOf mine}'"
      ++ lib.concatMap (
        sub:
        compare "${name}.<name>.${lib.concatStringsSep "." sub.path}" sub.option (
          lib.attrByPath sub.path null (theirs.type.getSubOptions [ ])
        )
      ) (if mine.type ? getSubOptions then options (mine.type.getSubOptions [ ]) [ ] else [ ]);
  declared = lib.filter (o: !ours o.path) (options localOptions [ ]);
in
{
  count = lib.length declared;
  mismatches = lib.concatMap (
    o: compare (lib.concatStringsSep "." o.path) o.option (lib.attrByPath o.path null otherOptions)
  ) declared;
}
