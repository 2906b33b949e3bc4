# A tiny stand-in for the parts of nixpkgs' lib and the NixOS module system
# that nixfleet's modules use, written with builtins only.
#
# Why it exists: this machine has Nix but no nixpkgs, and the tests in
# tests/nix still want to evaluate the real module files: which options they
# declare, and what ExecStart, LoadCredential, assertions and files their
# `config` produces for given option values. This is NOT the NixOS module
# system: there is no type checking, no merging of several definitions of one
# option, no priorities beyond dropping mkIf-false branches. What it proves is
# limited to "this module file, evaluated on its own with these values, yields
# this"; `nix flake check` on a machine with nixpkgs is the real test.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    foldl'
    isAttrs
    isList
    listToAttrs
    mapAttrs
    stringLength
    substring
    ;

  option = attrs: attrs // { _type = "option"; };
  type = name: extra: { _typeName = name; } // extra;

  types = {
    str = type "str" { };
    bool = type "bool" { };
    int = type "int" { };
    path = type "path" { };
    port = type "port" { };
    lines = type "lines" { };
    attrs = type "attrs" { };
    nullOr = t: type "nullOr" { elem = t; };
    listOf = t: type "listOf" { elem = t; };
    attrsOf = t: type "attrsOf" { elem = t; };
    enum = values: type "enum" { inherit values; };
    submodule = module: type "submodule" { inherit module; };
    ints = {
      positive = type "positive" { };
      unsigned = type "unsigned" { };
      between = lo: hi: type "between" { inherit lo hi; };
    };
  };

  escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";

  lib = {
    inherit types escapeShellArg;
    mkOption = option;
    mkEnableOption =
      what:
      option {
        default = false;
        type = types.bool;
        description = "Whether to enable ${what}.";
      };
    mkPackageOption =
      _pkgs: name: _extra:
      option {
        type = type "package" { };
        default = {
          pname = name;
          outPath = "/nix/store/00000000000000000000000000000000-${name}";
        };
      };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkDefault = content: {
      _type = "override";
      inherit content;
    };
    mkForce = content: {
      _type = "override";
      inherit content;
    };
    mkBefore = x: x;
    mkAfter = x: x;
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    hasPrefix = pre: s: substring 0 (stringLength pre) s == pre;
    hasSuffix =
      suf: s:
      let
        n = stringLength s;
        m = stringLength suf;
      in
      n >= m && substring (n - m) m s == suf;
    removePrefix =
      pre: s: if lib.hasPrefix pre s then substring (stringLength pre) (stringLength s - stringLength pre) s else s;
    hasInfix = infix: s: builtins.length (builtins.split (lib.escapeRegex infix) s) > 1;
    escapeRegex = builtins.replaceStrings [ "\\" "[" "{" "(" ")" "^" "$" "." "|" "*" "+" "?" "]" "}" ] [
      "\\\\"
      "\\["
      "\\{"
      "\\("
      "\\)"
      "\\^"
      "\\$"
      "\\."
      "\\|"
      "\\*"
      "\\+"
      "\\?"
      "\\]"
      "\\}"
    ];
    toInt = s: builtins.fromJSON s;
    getExe' = pkg: name: "${pkg.outPath or pkg}/bin/${name}";
    getExe = pkg: "${pkg.outPath or pkg}/bin/${pkg.meta.mainProgram or pkg.pname}";
    escapeShellArgs = args: concatStringsSep " " (map escapeShellArg args);
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: l: if c then l else [ ];
    optionalString = c: s: if c then s else "";
    optionalAttrs = c: a: if c then a else { };
    concatStrings = concatStringsSep "";
    concatMapStringsSep = sep: f: l: concatStringsSep sep (map f l);
    mapAttrsToList = f: a: map (n: f n a.${n}) (attrNames a);
    genAttrs =
      names: f:
      listToAttrs (
        map (n: {
          name = n;
          value = f n;
        }) names
      );
    fileContents = p: builtins.readFile p;
    recursiveUpdate =
      a: b:
      a
      // mapAttrs (
        k: v: if isAttrs v && a ? ${k} && isAttrs a.${k} then lib.recursiveUpdate a.${k} v else v
      ) b;
    filterAttrs = pred: a: removeAttrs a (filter (n: !pred n a.${n}) (attrNames a));
    unique = foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];
    concatMap = f: l: builtins.concatLists (map f l);
    # Enough of lib.fileset to see which paths a source keeps out.
    fileset = {
      toSource = { root, fileset }: {
        inherit root;
        excluded = fileset.excluded or [ ];
      };
      difference = _root: excluded: { excluded = excluded; };
      unions = l: l;
      maybeMissing = p: toString p;
    };
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" ];
  };

  # Stand-ins for the few packages and builders the modules name.
  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";
  stubPackage = name: {
    pname = name;
    outPath = storePath name;
  };
  pkgs = {
    formats.toml = _: {
      type = types.attrs;
      generate = name: _value: storePath name;
    };
    runCommand = name: env: script: {
      inherit name env script;
      outPath = storePath name;
    };
    writeShellScript = name: _text: storePath name;
    writeText = name: _text: storePath name;
    writeTextFile =
      {
        name,
        text,
        ...
      }:
      {
        inherit name text;
        outPath = storePath name;
      };
    stdenv.hostPlatform.system = "x86_64-linux";
    # buildRustPackage returns its arguments, so tests can read them back.
    rustPlatform.buildRustPackage = attrs: attrs // {
      outPath = storePath "${attrs.pname}-${attrs.version}";
      overrideAttrs = f: attrs // (if builtins.isFunction f then f attrs else f);
    };
    callPackage =
      fn: extra:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) (pkgs // { inherit lib; }) // extra);
  }
  // lib.genAttrs [
    "coreutils"
    "curl"
    "restic"
    "borgbackup"
    "openssh"
    "git"
    "zsh"
    "python3"
    "openssl"
    "jq"
  ] stubPackage;

  isOption = v: isAttrs v && (v._type or null) == "option";

  # Dotted names of every option declared under `tree` (submodule options as
  # "<list option>.*.<name>").
  optionPaths =
    prefix: tree:
    builtins.concatLists (
      map (
        k:
        let
          v = tree.${k};
          name = if prefix == "" then k else "${prefix}.${k}";
        in
        if isOption v then
          [ name ] ++ submodulePaths name (v.type or { })
        else if isAttrs v then
          optionPaths name v
        else
          [ ]
      ) (attrNames tree)
    );
  submodulePaths =
    name: t:
    if (t._typeName or null) == "listOf" && (t.elem._typeName or null) == "submodule" then
      optionPaths "${name}.*" ((t.elem.module).options or { })
    else
      [ ];

  # Option values: the given value, else the option's default; submodule
  # list elements get their own defaults.
  withDefaults =
    tree: given:
    mapAttrs (
      k: v:
      if isOption v then
        (
          if given ? ${k} then fillSubmodules v.type given.${k}
          else if v ? default then v.default
          else throw "option ${k} has no default and no value was given"
        )
      else if isAttrs v then
        withDefaults v (given.${k} or { })
      else
        v
    ) tree;
  fillSubmodules =
    t: value:
    if (t._typeName or null) == "listOf" && (t.elem._typeName or null) == "submodule" && isList value then
      map (e: withDefaults ((t.elem.module).options or { }) e) value
    else
      value;

  # Pushes mkIf/mkMerge/mkDefault down, dropping false branches.
  absent = {
    _absent = true;
  };
  resolve =
    v:
    if isAttrs v && (v._type or null) == "if" then
      (if v.condition then resolve v.content else absent)
    else if isAttrs v && (v._type or null) == "merge" then
      foldl' mergeResolved { } (map resolve v.contents)
    else if isAttrs v && (v._type or null) == "override" then
      resolve v.content
    else if isAttrs v && !(v ? outPath) && !(v ? _type) then
      let
        r = mapAttrs (_: resolve) v;
      in
      removeAttrs r (filter (n: isAttrs r.${n} && r.${n} ? _absent) (attrNames r))
    else
      v;
  mergeResolved =
    a: b:
    if b ? _absent then
      a
    else
      a
      // mapAttrs (
        k: v:
        if a ? ${k} && isAttrs a.${k} && isAttrs v then
          mergeResolved a.${k} v
        else if a ? ${k} && isList a.${k} && isList v then
          a.${k} ++ v
        else
          v
      ) b;
  # The definitions a module (or a function returning one) makes, with its
  # imports followed. Modules that declare options (nixfleet's own module
  # files, reached through nixosModule) are not evaluated here: the other
  # stub tests do that. Paths are skipped the same way.
  definitionsOf =
    args: module:
    if builtins.isPath module || builtins.isString module then
      [ ]
    else
      let
        m = if builtins.isFunction module then module args else module;
        own = removeAttrs m [ "imports" ];
      in
      (if m ? options then [ ] else [ own ]) ++ builtins.concatLists (map (definitionsOf args) (m.imports or [ ]));

  # Dotted names of the leaves of a resolved definition tree (lists and
  # derivation-like values are leaves).
  leafPaths =
    prefix: v:
    if isAttrs v && !(v ? outPath) then
      builtins.concatLists (
        map (k: leafPaths (if prefix == "" then k else "${prefix}.${k}") v.${k}) (attrNames v)
      )
    else
      [ prefix ];
in
{
  inherit lib pkgs types;

  # Every definition the modules made, merged: { definitions; paths; }.
  evalDefinitions =
    { module, config }:
    let
      defs = map resolve (definitionsOf {
        inherit lib pkgs config;
        options = { };
      } module);
      merged = foldl' mergeResolved { } defs;
    in
    {
      definitions = merged;
      paths = leafPaths "" merged;
    };

  # Every option a module file declares, as dotted names.
  declaredOptions =
    file:
    let
      m = import file {
        inherit lib pkgs;
        config = { };
        options = { };
      };
    in
    optionPaths "" (m.options or { });

  # Evaluates one module file alone. `values` are option values under the
  # module's own option tree (e.g. { services.nixfleet-agent = { ... }; }),
  # `hostConfig` the few other config values the module reads.
  evalModule =
    {
      file,
      values,
      hostConfig ? { },
      hostOptions ? { },
    }:
    let
      m = import file {
        inherit lib pkgs config;
        options = hostOptions;
      };
      ownValues = withDefaults m.options values;
      config = lib.recursiveUpdate hostConfig ownValues;
    in
    {
      inherit config;
      result = resolve m.config;
    };
}
