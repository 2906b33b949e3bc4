# Real NixOS generations for an agent node of the NixOS VM tests.
#
# Why it exists: the local harness (vmtests/lib/fake-system.nix.tmpl) moves
# its Debian containers between fake system closures. On NixOS the same
# scenario moves the node between two (or more) real NixOS configurations:
# G1 is the node's own configuration, the one it boots; every other
# generation is a specialisation of it, so it is a complete NixOS toplevel
# with its own bin/switch-to-configuration, built with the node and already
# registered in its Nix database (the test needs no nixpkgs at run time).
#
# Each generation does what the local fake does, observably:
#   - its demo service `fake-app` answers "fake-app <host> version <v>" on
#     :9000 (503 for variant "unhealthy"), restarted by the switch because its
#     ExecStart changed;
#   - its activation (at boot and on every switch) appends
#     "<label> <action> start" and "... done" to /var/lib/fake-system/switch.log,
#     writes /var/lib/fake-system/active ("active=<v>") and, when a switch (not
#     the boot) runs it, /tmp/stub-switch-called;
#   - switch-to-configuration flips /run/current-system itself; the system
#     profile is set by whoever switches (the agent), as with nixos-rebuild.
# Variants fail on purpose, the NixOS way:
#   switch-fails  a pre-switch check (nixpkgs >= 24.11) fails: nothing changes;
#   exit4         a unit fails to start: switch-to-configuration exits 4;
#   hang          a oneshot unit never finishes: the switch hangs after the
#                 link flipped;
#   slow          the activation sleeps 15 s before the link flips;
#   unhealthy     switches fine, the demo service answers 503.
# test.py finds them with build_fake_system(), which on NixOS reads
# /run/booted-system/specialisation/g<version>[-<variant>] (helpers.nix).
{
  host,
  pkgs,
  lib,
}:
let
  python = "${pkgs.python3}/bin/python3";
  labelOf = version: variant: version + lib.optionalString (variant != "") "-${variant}";

  demoApp =
    version: variant:
    pkgs.writeTextFile {
      name = "fake-app-${host}-${labelOf version variant}";
      executable = true;
      text = ''
      #!${python}
      # The demo service of generation ${labelOf version variant}: answers on :9000.
      import http.server
      UNHEALTHY = ${if variant == "unhealthy" then "True" else "False"}
      BODY = b"fake-app ${host} version ${version}" + (b" unhealthy" if UNHEALTHY else b"") + b"\n"
      class H(http.server.BaseHTTPRequestHandler):
          def do_GET(self):
              self.send_response(503 if UNHEALTHY else 200)
              self.send_header("Content-Type", "text/plain")
              self.send_header("Content-Length", str(len(BODY)))
              self.end_headers()
              self.wfile.write(BODY)
          def log_message(self, *a):
              pass
      http.server.ThreadingHTTPServer(("0.0.0.0", 9000), H).serve_forever()
    '';
    };

  # One generation's settings. `prio` wraps every value: the booted
  # configuration (G1) uses mkDefault so that each specialisation, which
  # inherits it, replaces rather than merges what differs.
  generation =
    {
      version,
      variant ? "",
      prio ? (x: x),
    }:
    let
      label = labelOf version variant;
      common = {
        system.nixos.tags = prio [ "g${label}" ];
        systemd.services.fake-app = {
          description = prio "Demo service of generation ${label}";
          wantedBy = [ "multi-user.target" ];
          serviceConfig.ExecStart = prio "${demoApp version variant}";
          serviceConfig.Restart = "on-failure";
        };
        system.activationScripts.nixfleet-vmtests-generation = {
          deps = [ "specialfs" ];
          text = prio ''
            mkdir -p /var/lib/fake-system
            echo "${label} ''${NIXOS_ACTION:-switch} start" >> /var/lib/fake-system/switch.log
            ${lib.optionalString (variant == "slow") "sleep 15"}
            echo "active=${version}" > /var/lib/fake-system/active
            if [ -n "''${NIXOS_ACTION:-}" ]; then echo "$NIXOS_ACTION" > /tmp/stub-switch-called; fi
            echo "${label} ''${NIXOS_ACTION:-switch} done" >> /var/lib/fake-system/switch.log
          '';
        };
      };
      switchFails = {
        # Runs before switch-to-configuration touches anything; its failure aborts the switch.
        system.preSwitchChecks.nixfleet-vmtests-switch-fails = ''
          mkdir -p /var/lib/fake-system
          echo "${label} ''${2:-switch} start" >> /var/lib/fake-system/switch.log
          echo "generation ${label} is built to fail (variant switch-fails)" >&2
          exit 1
        '';
      };
      exit4 = {
        systemd.services.nixfleet-vmtests-broken = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            ExecStart = "${pkgs.coreutils}/bin/false";
          };
        };
      };
      hang = {
        systemd.services.nixfleet-vmtests-hang = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
            TimeoutStartSec = "infinity";
          };
        };
      };
    in
    {
      imports =
        [ common ]
        ++ lib.optional (variant == "switch-fails") switchFails
        ++ lib.optional (variant == "exit4") exit4
        ++ lib.optional (variant == "hang") hang;
    };

  # The generations every agent node carries besides G1 (names as
  # build_fake_system() asks for them).
  others = {
    g2 = { version = "2"; };
    g2-switch-fails = { version = "2"; variant = "switch-fails"; };
    g2-exit4 = { version = "2"; variant = "exit4"; };
    g2-hang = { version = "2"; variant = "hang"; };
    g2-slow = { version = "2"; variant = "slow"; };
    g2-unhealthy = { version = "2"; variant = "unhealthy"; };
    g3 = { version = "3"; };
  };
in
{
  inherit labelOf others;

  # The NixOS module: G1 booted, the others as specialisations.
  module =
    { config, ... }:
    {
      imports = [
        (generation {
          version = "1";
          prio = lib.mkDefault;
        })
      ];
      specialisation = builtins.mapAttrs (_: g: { configuration = generation g; }) others;
      # The agent returns to "the generation that ran before" through the system profile; a
      # test VM booted without a boot loader may have none, so the first boot makes G1 the
      # profile, as an installed NixOS has it. Later activations leave the profile alone.
      system.activationScripts.nixfleet-vmtests-profile = {
        deps = [ "specialfs" ];
        text = ''
          if [ ! -e /nix/var/nix/profiles/system ]; then
            ${config.nix.package}/bin/nix-env -p /nix/var/nix/profiles/system --set "$systemConfig" || true
          fi
        '';
      };
    };
}
