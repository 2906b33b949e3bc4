# Finds the VM test scenarios: every directory under vmtests/scenarios.
#
# Why it exists: a new scenario must become a check by adding its directory,
# with no list to edit. Builtins only, so tests/nix can evaluate it on a machine
# without nixpkgs and compare it with the directories on disk.
#
# Returns { "<check name>" = { name = "<directory>"; dir = <path>; }; ... }.
# A directory named "vm-foo" is the check "vm-foo"; any other name "foo" is
# the check "vm-foo".
scenariosDir:
let
  entries = if builtins.pathExists scenariosDir then builtins.readDir scenariosDir else { };
  dirs = builtins.filter (n: entries.${n} == "directory") (builtins.attrNames entries);
  checkName = n: if builtins.substring 0 3 n == "vm-" then n else "vm-${n}";
in
builtins.listToAttrs (
  map (n: {
    name = checkName n;
    value = {
      name = n;
      dir = scenariosDir + "/${n}";
    };
  }) dirs
)
