# The seed's VM test helpers, for NixOS test nodes built from a scenario's
# nodes.json: mkTlsCerts, tlsCertsModule, mkCpNode, mkAgentNode, testPrelude,
# the nix shim, and mkNode, which turns one node of a plan (vmtests/nix/nodes.nix)
# into a NixOS module the way the local driver turns it into a container
# (vmtests/driver/scenario.py write_layer).
#
# Why it exists: the same nodes.json and test.py run in both suites, so the
# NixOS side must put the same files in the same places (/etc/nixfleet-tls,
# /etc/nixfleet-vmtests, /root/.ssh) and start the same services.
{
  pkgs,
  lib,
  nixosModule,
  packages,
}:
let
  libDir = ../lib;
  testKeys = import ./test-keys.nix;

  # Every node of every scenario shares one key set: the certificate names are
  # the union of all scenarios' node names (plus the fixed extra names).
  allScenarioHosts =
    let
      scenarios = import ./discover.nix ../scenarios;
      hostsOf =
        s:
        let
          f = s.dir + "/nodes.json";
        in
        if builtins.pathExists f then builtins.attrNames ((builtins.fromJSON (builtins.readFile f)).nodes or { }) else [ ];
    in
    lib.unique (lib.concatMap hostsOf (builtins.attrValues scenarios));

  # The fleet CA, a certificate per name, the root SSH key and the cache
  # signing key, made once at build time. For testing only: the private keys
  # are in the world-readable store.
  mkTlsCerts =
    {
      hostnames ? allScenarioHosts,
    }:
    pkgs.runCommand "nixfleet-test-keys"
      {
        nativeBuildInputs = [
          pkgs.openssl
          pkgs.openssh
          pkgs.coreutils
        ];
      }
      (testKeys {
        inherit hostnames;
      }).script;

  defaultCerts = mkTlsCerts { };

  # The whole fleet PKI under /etc/nixfleet-tls (as the local driver copies
  # it to every container): ca.pem, <name>-cert.pem, <name>-key.pem.
  # certPrefix is kept for the seed's signature; every name's pair is present.
  tlsCertsModule =
    {
      testCerts ? defaultCerts,
      certPrefix ? null,
    }:
    {
      environment.etc."nixfleet-tls".source = "${testCerts}/tls";
    };

  # The Python that comes before every test.py: the shared prelude, plus
  # overrides when a scenario talks to the API from another node.
  # ON_NIXOS, SSH_UNIT and CACHE_UNIT let a script name what differs between
  # a NixOS VM and a Debian container (the prelude's own values: False,
  # "ssh.service", "harmonia.service").
  testPrelude =
    {
      certPrefix ? "cp",
      api ? "https://localhost:8080",
    }:
    builtins.readFile (libDir + "/prelude.py")
    + ''

      # vmtests/nix/helpers.nix (testPrelude): this run is the NixOS test driver.
      ON_NIXOS = True
      SSH_UNIT = "sshd.service"
      CACHE_UNIT = "harmonia.service"

      # An agent node carries its generations as specialisations of the
      # configuration it booted (vmtests/nix/generations.nix): G2, its variants
      # and G3 are real NixOS toplevels, already in its store. Other nodes
      # build the fake system as the local harness does.
      _build_fake_system_nix = build_fake_system


      def build_fake_system(node, host, version, variant="", delay=None):
          name = f"g{version}" + (f"-{variant}" if variant else "")
          spec = f"/run/booted-system/specialisation/{name}"
          if node.execute(f"test -e {spec}")[0] == 0:
              assert delay in (None, 15), f"{name}: the NixOS generation sleeps 15 s, not {delay}"
              return node.succeed(f"readlink -f {spec}").strip()
          return _build_fake_system_nix(node, host, version, variant, delay)
    ''
    + lib.optionalString (certPrefix != "cp" || api != "https://localhost:8080") ''
      CERT_PREFIX = ${builtins.toJSON certPrefix}
      API = ${builtins.toJSON api}
      CURL = curl_for(CERT_PREFIX)
    '';

  nixShim =
    nixPackage:
    pkgs.writeTextFile {
      name = "nixfleet-nix-shim";
      destination = "/bin/nix";
      executable = true;
      text = import ./nix-shim.nix {
        realNix = "${nixPackage}/bin/nix";
        python = "${pkgs.python3}/bin/python3";
      };
    };

  # Agent nodes boot G1 and carry the other generations as specialisations,
  # unless their nodes.json says "systems": "fake" (vm-fleet-release, whose
  # G2 is built from a flake on the builder: there the node runs the fake
  # system of the local harness from generation 1 on).
  realGenerations = plan: plan ? agent && (plan.systems or "nixos") != "fake";

  # What every test node gets, whatever its role (write_layer's common part).
  commonModule =
    {
      scenario,
      host,
      plan,
      testCerts,
    }:
    { config, ... }:
    let
      hasFakeSystem = builtins.pathExists (libDir + "/fake-system.nix.tmpl");
    in
    {
      imports = [
        nixosModule
        (tlsCertsModule { inherit testCerts; })
      ];

      environment.etc = {
        "nixfleet-vmtests/node.json".text = builtins.toJSON ({ inherit scenario host; } // plan);
        "nixfleet-vmtests/cache-key.pub".source = "${testCerts}/cache/cache-key.pub";
      }
      // lib.optionalAttrs hasFakeSystem {
        "nixfleet-vmtests/fake-system.nix".text = import ./fake-system-nixos.nix {
          template = builtins.readFile (libDir + "/fake-system.nix.tmpl");
          coreutils = "${pkgs.coreutils}";
          systemd = "${config.systemd.package}";
          python3 = "${pkgs.python3}/bin/python3";
        };
      };

      # Nix as in the containers: no substituter unless the node names one,
      # the test cache key trusted, no negative narinfo cache, no sandbox (the
      # fake systems are built with store tools that are not declared inputs).
      nix.settings = {
        sandbox = false;
        substituters = lib.mkForce (plan.nix.substituters or [ ]);
        # The key is read from the key derivation by nix itself (include), not
        # at evaluation time, so evaluating a test builds nothing.
        trusted-public-keys = lib.mkForce [ ];
        require-sigs = true;
        narinfo-cache-negative-ttl = 0;
        experimental-features = [
          "nix-command"
          "flakes"
        ];
      };

      # Generation 1 is the fake system, as in the containers (vmtests/lib/boot.sh):
      # on first boot build it in this node's own store, make it the system
      # profile and switch to it; on every boot activate the profile. Its sw/
      # leads to the booted NixOS system, so the node keeps its tools.
      systemd.services.nixfleet-vmtests-boot = lib.mkIf (hasFakeSystem && !realGenerations plan) {
        description = "vmtests: activate the system profile (build fake generation 1 on first boot)";
        wantedBy = [ "multi-user.target" ];
        before = [
          "multi-user.target"
          "nixfleet-agent.service"
          "nixfleet-control-plane.service"
        ];
        wants = [ "nix-daemon.socket" ];
        after = [ "nix-daemon.socket" ];
        path = [
          config.nix.package
          config.systemd.package
          pkgs.coreutils
        ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          first=/var/lib/nixfleet-vmtests/generation-1
          profile=/nix/var/nix/profiles/system
          if [ ! -e "$first" ]; then
            sys=$(nix-build /etc/nixfleet-vmtests/fake-system.nix --argstr host ${host} --argstr version 1 --no-out-link)
            nix-env -p "$profile" --set "$sys"
            mkdir -p "$(dirname "$first")"
            ln -sfn "$sys" "$first"
          fi
          "$(readlink -f "$profile")"/bin/switch-to-configuration switch
          # The boot activation is not a deployment: leave no deployment marker behind.
          rm -f /tmp/stub-switch-called
        '';
      };

      nix.extraOptions = ''
        include ${testCerts}/cache/nix-trusted-keys.conf
      '';

      # Root's SSH identity, trusted by every node (the seed's test key).
      # Debian calls the unit ssh.service; scripts written for both may too.
      services.openssh.enable = true;
      systemd.services.sshd.aliases = [ "ssh.service" ];
      users.users.root.openssh.authorizedKeys.keyFiles = [ "${testCerts}/ssh/id_ed25519.pub" ];
      system.activationScripts.nixfleet-test-ssh-key = ''
        install -D -m 600 ${testCerts}/ssh/id_ed25519 /root/.ssh/id_ed25519
        install -D -m 644 ${testCerts}/ssh/id_ed25519.pub /root/.ssh/id_ed25519.pub
      '';
      programs.ssh.extraConfig = ''
        Host *
          StrictHostKeyChecking no
          UserKnownHostsFile /dev/null
          BatchMode yes
          LogLevel ERROR
      '';

      # Files the scenario asks for (extraFiles), written at activation so any
      # path works, /etc included.
      system.activationScripts.nixfleet-test-extra-files = {
        deps = [
          "etc"
          "users"
        ];
        text = lib.concatStrings (
          lib.mapAttrsToList (path: content: ''
            install -D -m 644 ${pkgs.writeText "extra-file" content} ${lib.escapeShellArg path}
          '') (plan.extraFiles or { })
        );
      };

      environment.systemPackages = [
        packages.nixfleet
        packages.nixfleet-control-plane
        packages.nixfleet-agent
        pkgs.curl
        pkgs.jq
        pkgs.openssl
        pkgs.python3
      ];

      networking.firewall.allowedTCPPorts = plan.openPorts or [ ];
    };

  # Scopes named in nodes.json -> the framework modules.
  scopesModule = scopes: {
    nixfleet.core = lib.mkIf (builtins.elem "core" scopes) {
      enable = true;
      userName = "testuser";
    };
    nixfleet.role = lib.mkIf (builtins.elem "minimal" scopes) "endpoint";
    nixfleet.firewall.enable = builtins.elem "firewall" scopes;
    nixfleet.monitoring.nodeExporter = lib.mkIf (builtins.elem "monitoring" scopes) {
      enable = true;
      openFirewall = true;
    };
    nixfleet.backup.enable = builtins.elem "backup" scopes;
    nixfleet.secrets.enable = builtins.elem "secrets" scopes;
    # NetworkManager (core) must leave the test network's static addresses alone.
    networking.networkmanager.unmanaged = [ "type:ethernet" ];
  };

  autoStartOff = unit: {
    systemd.services.${unit}.wantedBy = lib.mkForce [ ];
  };

  # A control plane with the standard mTLS wiring. `controlPlane` holds
  # services.nixfleet-control-plane options (node-defaults.json merged under
  # nodes.json), plus autoStart.
  mkCpNode =
    {
      testCerts ? defaultCerts,
      controlPlane ? (builtins.fromJSON (builtins.readFile (libDir + "/node-defaults.json"))).controlPlane,
    }:
    {
      imports = [
        (tlsCertsModule { inherit testCerts; })
      ] ++ lib.optional ((controlPlane.autoStart or true) == false) (autoStartOff "nixfleet-control-plane");
      services.nixfleet-control-plane = {
        enable = true;
        openFirewall = true;
      } // builtins.removeAttrs controlPlane [ "autoStart" ];
      virtualisation.memorySize = lib.mkDefault 1024;
    };

  # An agent with standard TLS and fleet CA trust. `agent` holds
  # services.nixfleet-agent options (healthChecks included) plus autoStart;
  # agentExtraConfig is the seed's escape hatch, merged over it.
  mkAgentNode =
    {
      testCerts ? defaultCerts,
      hostName,
      agent ? { },
      tags ? null,
      healthChecks ? null,
      agentExtraConfig ? { },
    }:
    let
      defaults = builtins.fromJSON (
        builtins.replaceStrings [ "@HOST@" ] [ hostName ] (builtins.readFile (libDir + "/node-defaults.json"))
      );
      merged = lib.recursiveUpdate (lib.recursiveUpdate defaults.agent agent) (
        lib.filterAttrs (_: v: v != null) { inherit tags healthChecks; } // agentExtraConfig
      );
    in
    {
      imports = [
        (tlsCertsModule { inherit testCerts; })
      ] ++ lib.optional ((merged.autoStart or true) == false || (merged.enable or true) == false) (autoStartOff "nixfleet-agent");
      services.nixfleet-agent = builtins.removeAttrs merged [ "autoStart" ] // {
        # A disabled agent keeps its unit (the timeout scenario starts none), so
        # `enable = false` in the data means "installed, never started".
        enable = true;
        metricsOpenFirewall = merged.metricsOpenFirewall or (merged.metricsPort or null != null);
      };
    };

  # One node of a scenario plan as a NixOS module.
  mkNode =
    {
      scenario,
      host,
      plan,
      testCerts ? defaultCerts,
    }:
    { config, ... }:
    {
      imports = [
        (commonModule {
          inherit
            scenario
            host
            plan
            testCerts
            ;
        })
        (scopesModule plan.scopes)
      ]
      ++ lib.optional (plan ? controlPlane) (mkCpNode {
        inherit testCerts;
        controlPlane = plan.controlPlane;
      })
      ++ lib.optional (realGenerations plan) (import ./generations.nix { inherit host pkgs lib; }).module
      ++ lib.optional (plan ? agent) (mkAgentNode {
        inherit testCerts;
        hostName = host;
        agent = plan.agent;
      })
      ++ lib.optional (plan ? cacheServer) {
        environment.etc."nixfleet-vmtests/cache-key.sec" = {
          source = "${testCerts}/cache/cache-key.sec";
          mode = "0400";
        };
        services.nixfleet-cache-server = {
          enable = true;
          openFirewall = true;
        } // plan.cacheServer;
        # test.py waits for nixfleet-cache-server.service, the alias the local
        # harness gives its harmonia too. nixpkgs socket-activates harmonia; the
        # tests want it running from boot, as the seed's did.
        systemd.services.harmonia = {
          aliases = [ "nixfleet-cache-server.service" ];
          wantedBy = [ "multi-user.target" ];
          environment.RUST_LOG = "info";
        };
      }
      ++ lib.optional (plan ? database) {
        # The shared event log of several control planes (vm-ha-failover). The local
        # harness runs the same server (Debian's) with the same database, owner and trust
        # (vmtests/driver/postgres.py).
        services.postgresql = {
          enable = true;
          enableTCPIP = true;
          ensureDatabases = [ plan.database.name ];
          ensureUsers = [
            {
              name = plan.database.user;
              ensureDBOwnership = true;
            }
          ];
          authentication = "host all all samenet trust\n";
        };
        networking.firewall.allowedTCPPorts = [ plan.database.port ];
      }
      ++ lib.optional (builtins.elem plan.role [
        "operator"
        "builder"
      ]) { environment.extraInit = lib.mkBefore ''export PATH="${nixShim config.nix.package}/bin:$PATH"''; };
    };
in
{
  inherit
    mkTlsCerts
    tlsCertsModule
    mkCpNode
    mkAgentNode
    mkNode
    testPrelude
    nixShim
    defaultCerts
    ;
}
