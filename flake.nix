{
  description = "nixfleet: event-sourced rollouts of NixOS generations to fleets of machines";

  # A release branch, locked in flake.lock (docs/nixos.md says how to create and update it).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      ourPackages = pkgs: import ./nixos/pkgs/packages.nix { inherit (pkgs) callPackage runCommand; };

      # The service modules with their packages defaulting to this flake's
      # builds, so a host needs only `imports = [ nixfleet.nixosModules.default ]`.
      nixosModule =
        { lib, pkgs, ... }:
        let
          ours = self.packages.${pkgs.stdenv.hostPlatform.system};
        in
        {
          imports = [ ./nixos ];
          services.nixfleet-control-plane.package = lib.mkDefault ours.nixfleet-control-plane;
          services.nixfleet-agent.package = lib.mkDefault ours.nixfleet-agent;
        };

      rustChecks =
        pkgs:
        let
          workspace = (ourPackages pkgs).nixfleet-workspace;
        in
        {
          cargo-test = workspace.overrideAttrs {
            pname = "nixfleet-cargo-test";
            doCheck = true;
          };
          cargo-clippy = workspace.overrideAttrs (old: {
            pname = "nixfleet-cargo-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --workspace --all-targets --offline -- -D warnings
              runHook postBuild
            '';
            installPhase = "touch $out";
            doCheck = false;
          });
          cargo-fmt =
            pkgs.runCommand "nixfleet-cargo-fmt"
              {
                nativeBuildInputs = [
                  pkgs.cargo
                  pkgs.rustfmt
                ];
              }
              ''
                cp -r ${workspace.src} src && chmod -R u+w src && cd src
                HOME=$TMPDIR cargo fmt --all --check
                touch $out
              '';
        };

      # tests/nix evaluates the modules with nixpkgs' lib and the NixOS options they touch
      # declared in tests/nix/nixos-options.nix (this machine has no nixpkgs). This check holds
      # those declarations against nixpkgs' own (same option, same type description, also
      # one level into submodules) and evaluates the local tests' full host
      # (tests/nix/full-host.nix) inside a real NixOS system, assertions included.
      nixosOptionTypes =
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          real = lib.nixosSystem {
            inherit system;
            modules = [
              self.nixosModules.default
              ./tests/nix/full-host.nix
              {
                boot.loader.grub.enable = false;
                fileSystems."/".device = "none";
                system.stateVersion = lib.trivial.release;
              }
            ];
          };
          # virtualisation.memorySize (the test nodes set it) comes from the VM module.
          realOptions =
            (real.extendModules { modules = [ "${nixpkgs}/nixos/modules/virtualisation/qemu-vm.nix" ]; }).options;
          result = import ./tests/nix/option-types.nix {
            inherit lib;
            localOptions = (import ./tests/nix/eval.nix { inherit lib; }).options;
            otherOptions = realOptions;
          };
          inherit (result) mismatches;
          toplevel = builtins.unsafeDiscardStringContext real.config.system.build.toplevel.drvPath;
        in
        if mismatches != [ ] then
          throw "tests/nix/nixos-options.nix differs from nixpkgs:\n${lib.concatStringsSep "\n" mismatches}"
        else
          pkgs.runCommand "nixfleet-nixos-option-types" { } ''
            echo "${toString result.count} NixOS options declared as nixpkgs declares them; full host: ${toplevel}" > $out
          '';

      # Every directory of vmtests/scenarios becomes a vm-* check (x86_64-linux
      # only: the NixOS test driver runs QEMU with KVM).
      vmChecks =
        pkgs:
        lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") (
          import ./vmtests {
            inherit pkgs;
            nixosModule = self.nixosModules.default;
            packages = self.packages.${pkgs.stdenv.hostPlatform.system};
          }
        );
    in
    {
      overlays.default = final: _prev: ourPackages final;

      packages = forAllSystems (
        pkgs:
        let
          ours = ourPackages pkgs;
        in
        ours // { default = ours.nixfleet; }
      );

      nixosModules = {
        default = nixosModule;
        nixfleet = nixosModule;
      };

      # Pure helpers, usable without nixpkgs (tests/nix evaluates them).
      lib = {
        serviceFlags = import ./nixos/lib/flags.nix;
        healthChecks = import ./nixos/lib/health-checks.nix;
        vmtestScenarios = (import ./vmtests/nix/discover.nix) ./vmtests/scenarios;
      };

      checks = forAllSystems (
        pkgs: rustChecks pkgs // vmChecks pkgs // { nixos-option-types = nixosOptionTypes pkgs; }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.openssl
            pkgs.nixfmt
            (pkgs.python3.withPackages (ps: [ ps.pytest ]))
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);

      # nix run .#validate -- --all | --vm | --rust
      apps = forAllSystems (pkgs: {
        validate = {
          type = "app";
          program = lib.getExe (
            pkgs.writeShellApplication {
              name = "nixfleet-validate";
              runtimeInputs = [ pkgs.jq ];
              text = ''
                mode="''${1:---all}"
                flake="''${NIXFLEET_FLAKE:-path:${self}}"
                system=${pkgs.stdenv.hostPlatform.system}
                case "$mode" in
                  --all) filter='.[]' ;;
                  --vm) filter='.[] | select(startswith("vm-"))' ;;
                  --rust) filter='.[] | select(startswith("vm-") | not)' ;;
                  *) echo "usage: nix run .#validate -- --all | --vm | --rust" >&2; exit 2 ;;
                esac
                # Discovered, not listed: a new vmtests/scenarios/<name> is picked up here.
                mapfile -t names < <(nix eval --json "$flake#checks.$system" --apply builtins.attrNames | jq -r "$filter")
                passed=0; failed=0; failures=()
                for name in "''${names[@]}"; do
                  echo "=== $name"
                  if nix build "$flake#checks.$system.$name" --no-link -L; then
                    passed=$((passed + 1))
                  else
                    failed=$((failed + 1)); failures+=("$name")
                  fi
                done
                for name in "''${failures[@]}"; do
                  echo "FAILED: $name (nix log $flake#checks.$system.$name)"
                done
                echo "$passed passed, $failed failed"
                [ "$failed" -eq 0 ]
              '';
            }
          );
        };
      });
    };
}
