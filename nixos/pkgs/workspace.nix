# The whole Cargo workspace built once: nixfleet-control-plane,
# nixfleet-agent and nixfleet in one derivation.
#
# Why one derivation: the three binaries share almost every dependency, so
# building them together compiles the dependency graph once. packages.nix
# splits the result into one package per binary.
{ lib, rustPlatform }:
let
  root = ../..;
  cargoToml = builtins.fromTOML (builtins.readFile (root + "/Cargo.toml"));
in
rustPlatform.buildRustPackage {
  pname = "nixfleet";
  version = cargoToml.workspace.package.version;

  # Only what cargo needs: editing a NixOS module or a VM test must not
  # rebuild the binaries.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.difference root (
      lib.fileset.unions (
        map lib.fileset.maybeMissing [
          (root + "/nixos")
          (root + "/vmtests")
          (root + "/docs")
          (root + "/tests")
          (root + "/target")
          (root + "/flake.nix")
          (root + "/flake.lock")
          (root + "/.ci")
        ]
      )
    );
  };

  cargoLock.lockFile = root + "/Cargo.lock";

  cargoBuildFlags = [ "--workspace" ];
  # Unit tests only: the integration tests start sshd, network namespaces and
  # containers as root, which the Nix build sandbox does not allow. They run
  # from the project's test command instead.
  cargoTestFlags = [
    "--workspace"
    "--lib"
    "--bins"
  ];
  doCheck = false;

  meta = {
    description = "Rollouts of NixOS system generations to fleets of machines";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
    mainProgram = "nixfleet";
  };
}
