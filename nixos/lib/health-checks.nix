# Renders services.nixfleet-agent.healthChecks into the agent's health check
# file (/etc/nixfleet/health-checks.json).
#
# Why this file exists: the file format is a wire contract, `HealthChecksConfig`
# in proto/src/api/v1.rs (keys systemd/http/command; http uses
# `expected_status`; `interval` is optional). Keeping the mapping here, with
# builtins only, lets tests/nix check it without nixpkgs.
let
  # Drops attributes whose value is null, so optional fields are absent rather
  # than `null` (both parse, absent is what the Rust side writes itself).
  dropNulls = attrs: builtins.removeAttrs attrs (builtins.filter (n: attrs.${n} == null) (builtins.attrNames attrs));
in
{
  # healthChecks: { systemd = [ { units; interval? } ]; http = [ { url; interval?; timeout?; expectedStatus? } ];
  #                 command = [ { name; command; interval?; timeout? } ]; }
  # Missing fields get the module's defaults (http interval 5, timeout 3,
  # status 200; command interval 10, timeout 5), so raw scenario data and
  # module values render alike.
  render = healthChecks: {
    systemd = map (c: dropNulls {
      units = c.units;
      interval = c.interval or null;
    }) (healthChecks.systemd or [ ]);
    http = map (c: dropNulls {
      url = c.url;
      interval = c.interval or 5;
      timeout = c.timeout or 3;
      expected_status = c.expectedStatus or c.expected_status or 200;
    }) (healthChecks.http or [ ]);
    command = map (c: dropNulls {
      name = c.name;
      command = c.command;
      interval = c.interval or 10;
      timeout = c.timeout or 5;
    }) (healthChecks.command or [ ]);
  };
}
