# One package per nixfleet binary, all sharing one workspace build.
#
# Why: NixOS modules take a `package` per service (lib.getExe must find the
# right program), and users install the CLI alone.
{ callPackage, runCommand }:
let
  workspace = callPackage ./workspace.nix { };
  onlyBinary =
    name:
    runCommand "${name}-${workspace.version}"
      {
        inherit (workspace) version;
        meta = workspace.meta // {
          mainProgram = name;
        };
        passthru = { inherit workspace; };
      }
      ''
        mkdir -p $out/bin
        ln -s ${workspace}/bin/${name} $out/bin/${name}
      '';
in
{
  nixfleet-workspace = workspace;
  nixfleet-control-plane = onlyBinary "nixfleet-control-plane";
  nixfleet-agent = onlyBinary "nixfleet-agent";
  nixfleet = onlyBinary "nixfleet";
}
