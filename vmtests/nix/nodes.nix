# Reads one scenario's nodes.json the way the local driver does
# (vmtests/driver/scenario.py load_nodes), so both suites configure a node
# from the same data with the same rules:
#
# - vmtests/lib/node-defaults.json is merged under every node (recursively;
#   lists and scalars replace), and "@HOST@" becomes the node's name;
# - controlPlane applies to role "control-plane", cacheServer to role
#   "cache-server", database to role "database", agent to role "agent" or any
#   node that has an "agent" key;
# - scopes default to the defaults' scopes; openPorts, nix, extraFiles and
#   systems ("fake": a NixOS agent node runs fake systems, see helpers.nix)
#   are passed through.
#
# Builtins only: tests/nix evaluates it for every scenario on disk.
let
  roles = [
    "control-plane"
    "agent"
    "operator"
    "builder"
    "cache-server"
    "database"
    "ssh-target"
    "plain"
  ];
  scopeNames = [
    "core"
    "minimal"
    "firewall"
    "monitoring"
    "backup"
    "secrets"
  ];

  deepMerge =
    base: over:
    if builtins.isAttrs base && builtins.isAttrs over then
      base // builtins.mapAttrs (k: v: if base ? ${k} then deepMerge base.${k} v else v) over
    else
      over;

  subst =
    host: v:
    if builtins.isString v then
      builtins.replaceStrings [ "@HOST@" ] [ host ] v
    else if builtins.isList v then
      map (subst host) v
    else if builtins.isAttrs v then
      builtins.mapAttrs (_: subst host) v
    else
      v;

  planNode =
    file: defaults: host: spec:
    let
      role = spec.role or "plain";
      scopes = spec.scopes or defaults.scopes;
      badScopes = builtins.filter (s: !builtins.elem s scopeNames) scopes;
      merged = key: subst host (deepMerge defaults.${key} (spec.${key} or { }));
    in
    if !builtins.elem role roles then
      throw "${file}: node ${host}: unknown role ${role}"
    else if badScopes != [ ] then
      throw "${file}: node ${host}: unknown scope ${builtins.head badScopes}"
    else
      {
        inherit role scopes;
      }
      // (if role == "control-plane" then { controlPlane = merged "controlPlane"; } else { })
      // (if role == "agent" || spec ? agent then { agent = merged "agent"; } else { })
      // (if role == "cache-server" then { cacheServer = merged "cacheServer"; } else { })
      // (if role == "database" then { database = merged "database"; } else { })
      // builtins.intersectAttrs {
        openPorts = null;
        nix = null;
        extraFiles = null;
        systems = null;
      } spec;
in
{
  inherit roles scopeNames deepMerge;

  # scenarioDir: path of vmtests/scenarios/<name>; libDir: vmtests/lib.
  # Returns { name; description; nodes = { <host> = plan; }; }.
  load =
    { scenarioDir, libDir }:
    let
      file = scenarioDir + "/nodes.json";
      doc =
        if builtins.pathExists file then
          builtins.fromJSON (builtins.readFile file)
        else
          throw "${toString scenarioDir}: no nodes.json (every scenario needs nodes.json and test.py)";
      defaults = builtins.fromJSON (builtins.readFile (libDir + "/node-defaults.json"));
      nodes = builtins.mapAttrs (planNode (toString file) defaults) (doc.nodes or { });
    in
    if nodes == { } then
      throw "${toString file}: no nodes"
    else
      {
        name = doc.name or (baseNameOf (toString scenarioDir));
        description = doc.description or "";
        inherit nodes;
      };

  # The options of `services.nixfleet-agent` / `-control-plane` a plan sets,
  # as dotted names, for the consistency test. Lists of attrsets (health
  # checks) give "<list>" and "<list>.*.<key>"; `settings` is free-form.
  optionNames =
    attrs:
    let
      go =
        prefix: a:
        builtins.concatLists (
          map (
            k:
            let
              v = a.${k};
              name = prefix + k;
            in
            if builtins.isAttrs v && k != "settings" then
              go (name + ".") v
            else if builtins.isList v && builtins.all builtins.isAttrs v && v != [ ] then
              [ name ] ++ builtins.concatLists (map (go (name + ".*.")) v)
            else
              [ name ]
          ) (builtins.attrNames a)
        );
    in
    go "" attrs;
}
