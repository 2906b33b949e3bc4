# A host with every nixfleet module on and every scope (by the workstation role or by hand),
# with values that pass every assertion. tests/nix evaluates it with nixpkgs' lib and the
# NixOS options declared in nixos-options.nix; the flake's `nixos-option-types` check
# evaluates the very same module inside a real NixOS system (lib.nixosSystem).
{
  services = {
    nixfleet-agent = {
      enable = true;
      controlPlaneUrl = "https://cp:8080";
      metricsPort = 9101;
      metricsOpenFirewall = true;
      tls = {
        caCert = "/etc/ca.pem";
        clientCert = "/etc/c.pem";
        clientKey = "/etc/k.pem";
      };
      healthChecks = {
        http = [ { url = "http://localhost/"; } ];
        systemd = [ { units = [ "a" ]; } ];
        command = [
          {
            name = "c";
            command = "true";
          }
        ];
      };
    };
    nixfleet-control-plane = {
      enable = true;
      openFirewall = true;
      settings.executor.tick_ms = 500;
      tls = {
        cert = "/etc/c.pem";
        key = "/etc/k.pem";
        clientCa = "/etc/ca.pem";
      };
    };
    nixfleet-cache-server = {
      enable = true;
      openFirewall = true;
      signingKeyFile = "/etc/cache.sec";
    };
    nixfleet-cache = {
      enable = true;
      cacheUrl = "http://cache:5000";
      publicKey = "k-1:AAAA";
    };
  };
  nixfleet = {
    role = "workstation";
    core.userName = "alice";
    monitoring.nodeExporter = {
      enable = true;
      openFirewall = true;
    };
    backup = {
      enable = true;
      backend = "restic";
      restic = {
        repository = "/r";
        passwordFile = "/p";
      };
    };
  };
}
