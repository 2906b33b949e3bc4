# One VM test (a runNixOSTest check) from one scenario directory:
# nodes from nodes.json, script = vmtests/lib/prelude.py + test.py.
#
# Why it exists: the scenario files are shared with the local harness; this
# is the only NixOS-specific step, so adding a directory is enough to add a
# check.
{
  pkgs,
  lib,
  helpers,
  checkName,
  dir,
}:
let
  plan = (import ./nodes.nix).load {
    scenarioDir = dir;
    libDir = ../lib;
  };
  testPy = dir + "/test.py";
in
pkgs.testers.runNixOSTest {
  name = checkName;

  nodes = builtins.mapAttrs (
    host: nodePlan:
    helpers.mkNode {
      scenario = plan.name;
      inherit host;
      plan = nodePlan;
    }
  ) plan.nodes;

  # The scripts are written for both drivers (this one and vmtests/driver);
  # the shared prelude uses module-level globals that mypy would reject.
  skipTypeCheck = true;
  skipLint = true;

  testScript =
    if builtins.pathExists testPy then
      helpers.testPrelude { } + "\n" + builtins.readFile testPy
    else
      throw "${toString dir}: no test.py (every scenario needs nodes.json and test.py)";
}
