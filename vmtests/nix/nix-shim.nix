# The `nix` shim of the seed, as script text: it answers `nix eval` and
# `nix build` of a flake's nixosConfigurations with canned values, and hands
# every other command (nix copy, nix-store calls through nix, path-info ...) to
# the real nix by absolute path.
#
# Why it exists: `nixfleet release create` and `nixfleet deploy --ssh` evaluate
# and build a flake; a VM test cannot build a whole NixOS system for a fake
# flake, but must still push and switch real store paths. The canned values
# are read at run time from a JSON file that test.py writes (so the paths can
# be built inside the test), by default /var/lib/nixfleet-shim/responses.json
# (or $NIXFLEET_SHIM_RESPONSES):
#
#   { "hosts": { "web-01": { "toplevel": "/nix/store/...", "system": "x86_64-linux", "tags": ["web"] } },
#     "eval":  { "<attribute path>": <any JSON value> },     exact overrides for nix eval
#     "build": { "<attribute path>": "/nix/store/..." } }    exact overrides for nix build
#
# `release create` and `deploy --ssh` evaluate all selected hosts in one
# `nix eval <flake>#nixosConfigurations --apply <expr>`; the shim cannot
# evaluate the expression, so it reads the `# nixfleet-select: <globs>` line
# in it and answers { all, hosts.<name> = { ok, drv, out, system, tags } }
# with drv = toplevel + ".drv". The one `nix build` of those drv paths
# (`drv` or `drv^*`, many at once) is answered from the same table.
#
# The real nix is called by absolute path on purpose: the shim is put first on
# PATH, so a fall-through that looked nix up on PATH would exec itself forever.
# Builtins only: tests/nix runs this script against a fake "real nix".
{ realNix, python }:
''
  #!${python}
  """nix shim for VM tests (see vmtests/nix/nix-shim.nix)."""
  import fnmatch
  import json
  import os
  import re
  import sys

  REAL_NIX = "${realNix}"
  RESPONSES = os.environ.get("NIXFLEET_SHIM_RESPONSES", "/var/lib/nixfleet-shim/responses.json")
  OPTS_WITH_VALUE = {"--apply", "--out-link", "-o", "--option", "--extra-experimental-features",
                     "--experimental-features", "--store", "--eval-store", "--override-input", "--log-format",
                     "--max-jobs", "-j"}


  def real():
      os.execv(REAL_NIX, [REAL_NIX] + sys.argv[1:])


  def positional(args):
      out, i = [], 0
      while i < len(args):
          a = args[i]
          if a == "--option" or a == "--override-input":
              i += 3
              continue
          if a in OPTS_WITH_VALUE:
              i += 2
              continue
          if not a.startswith("-"):
              out.append(a)
          i += 1
      return out


  def value_of(args, *names):
      for i, a in enumerate(args):
          if a in names and i + 1 < len(args):
              return args[i + 1]
      return None


  def split_attr(attr):
      # nixosConfigurations."web-01".config -> ["nixosConfigurations", "web-01", "config"]
      return [m.group(1) if m.group(1) is not None else m.group(2)
              for m in re.finditer(r'"([^"]*)"|([^.]+)', attr)]


  def lookup(responses, kind, attr):
      exact = responses.get(kind, {})
      if attr in exact:
          return True, exact[attr]
      parts = split_attr(attr)
      hosts = responses.get("hosts", {})
      if parts in (["nixosConfigurations"], ["darwinConfigurations"]):
          return True, ({h: {} for h in hosts} if parts[0] == "nixosConfigurations" else {})
      if len(parts) >= 2 and parts[0] == "nixosConfigurations" and parts[1] in hosts:
          host = hosts[parts[1]]
          rest = parts[2:]
          if rest[-1:] == ["outPath"]:
              rest = rest[:-1]
          if rest and rest[-1] in ("toplevel", "outPath"):
              return True, host["toplevel"]
          if rest and rest[-1] == "system":
              return True, host.get("system", "x86_64-linux")
          if rest and rest[-1] == "tags":
              return True, host.get("tags", [])
      return False, None


  def select_answer(responses, expr):
      # The one evaluation of release create / deploy --ssh (see the top of this file).
      m = re.search(r"nixfleet-select: ([^\n]*)", expr)
      globs = [g.strip() for g in m.group(1).split(",") if g.strip()]
      hosts = responses.get("hosts", {})
      chosen = {h: v for h, v in hosts.items() if any(fnmatch.fnmatchcase(h, g) for g in globs)}
      return {"all": sorted(hosts),
              "hosts": {h: {"ok": True, "drv": v["toplevel"] + ".drv", "out": v["toplevel"],
                            "system": v.get("system", "x86_64-linux"), "tags": v.get("tags", [])}
                        for h, v in chosen.items()}}


  def build_drvs(responses, args, drvs):
      # The one build of every host's toplevel derivation.
      by_drv = {v["toplevel"] + ".drv": v["toplevel"] for v in responses.get("hosts", {}).values()}
      outs = [by_drv.get(d.split("^", 1)[0]) for d in drvs]
      if None in outs:
          real()
      if "--json" in args:
          print(json.dumps([{"drvPath": o + ".drv", "outputs": {"out": o}} for o in outs]))
      elif "--print-out-paths" in args:
          print("\n".join(outs))


  def main():
      args = sys.argv[1:]
      pos = positional(args)
      if not pos or pos[0] not in ("eval", "build"):
          real()
      try:
          with open(RESPONSES) as f:
              responses = json.load(f)
      except FileNotFoundError:
          real()
      expr = value_of(args, "--apply") or ""
      if pos[0] == "eval" and "nixfleet-select:" in expr:
          print(json.dumps(select_answer(responses, expr)))
          return
      drvs = [p for p in pos[1:] if p.startswith("/nix/store/") and ".drv" in p]
      if pos[0] == "build" and drvs and len(drvs) == len(pos) - 1:
          build_drvs(responses, args, drvs)
          return
      installables = [p for p in pos[1:] if "#" in p]
      if len(installables) != 1:
          real()
      attr = installables[0].split("#", 1)[1]
      found, value = lookup(responses, pos[0], attr)
      if not found:
          sys.stderr.write(f"nix shim: no canned {pos[0]} result for '{attr}' in {RESPONSES}\n")
          sys.exit(1)
      if pos[0] == "eval":
          if value_of(args, "--apply") == "builtins.attrNames" and isinstance(value, dict):
              value = sorted(value)
          if "--raw" in args and isinstance(value, str):
              sys.stdout.write(value)
          else:
              print(json.dumps(value))
          return
      # build
      if "--no-link" not in args:
          link = value_of(args, "--out-link", "-o") or "result"
          if os.path.islink(link):
              os.unlink(link)
          os.symlink(value, link)
      if "--json" in args:
          print(json.dumps([{"drvPath": value + ".drv", "outputs": {"out": value}}]))
      elif "--print-out-paths" in args:
          print(value)


  main()
''
