# Adapts the local harness's fake system (vmtests/lib/fake-system.nix.tmpl)
# to NixOS test nodes, so test.py builds and deploys the very same fake
# generations on both sides.
#
# Why it exists: the template is written for the Debian containers (tools in
# /usr/bin, python3 at /usr/bin/python3). A NixOS node has neither, and once
# a fake generation is active /run/current-system/sw/bin is gone too, so the
# switch script must name systemctl by store path. Every replacement below
# must match: if the template changes shape, evaluation fails here (and in
# tests/nix) instead of producing a fake system that silently misbehaves.
# Builtins only.
{
  template,
  coreutils,
  systemd,
  python3,
}:
let
  replacements = [
    {
      from = ''PATH = "/usr/bin:/bin";'';
      to = ''PATH = "${coreutils}/bin";'';
    }
    {
      from = "#!/usr/bin/python3";
      to = "#!${python3}";
    }
    {
      # A NixOS node keeps its real software while a fake generation is
      # current: sw/ and kernel-modules/ lead to the booted system. The links
      # name /run/booted-system, not a store path, so the fake closure stays
      # one path (no reference to the node's own system).
      from = "mkdir -p $out/bin $out/etc\n";
      to = "mkdir -p $out/bin $out/etc\n    ln -s /run/booted-system/sw $out/sw\n    ln -s /run/booted-system/kernel-modules $out/kernel-modules\n";
    }
    {
      from = "set -eu\n    action=";
      to = "set -eu\n    PATH=${systemd}/bin:${coreutils}/bin:\\$PATH\n    action=";
    }
  ];
  missing = builtins.filter (r: builtins.match ".*${escapeRegex r.from}.*" template == null) replacements;
  escapeRegex = s: builtins.replaceStrings [ "." "*" "[" "]" "(" ")" "+" "?" "{" "}" "|" "^" "$" "\\" "\n" ] [ "\\." "\\*" "\\[" "\\]" "\\(" "\\)" "\\+" "\\?" "\\{" "\\}" "\\|" "\\^" "\\$" "\\\\" "\n" ] s;
in
if missing != [ ] then
  throw "vmtests/lib/fake-system.nix.tmpl changed: '${(builtins.head missing).from}' not found; update vmtests/nix/fake-system-nixos.nix"
else
  builtins.replaceStrings (map (r: r.from) replacements) (map (r: r.to) replacements) template
