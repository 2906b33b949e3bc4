# Shared prelude of every vmtests scenario: prepended to each test.py, by the local
# driver (vmtests/run) and by the NixOS side alike. It replaces the seed's
# testPrelude: same names (TEST_KEY, KEY_HASH, AUTH, CURL, API, seed_admin_key), but
# the admin key comes from the bootstrap API, since our control plane has no SQL table
# a test could write into.
import json
import os
import re
import shlex
import time

CERT_PREFIX = "cp"
API = "https://localhost:8080"
# What differs between a Debian container and a NixOS VM; the NixOS test driver sets these
# again after the prelude (vmtests/nix/helpers.nix testPrelude). The cache server is harmonia
# on both sides, with the alias nixfleet-cache-server.service.
ON_NIXOS = False
SSH_UNIT = "ssh.service"
CACHE_UNIT = "harmonia.service"
TLS_DIR = "/etc/nixfleet-tls"
CA = f"{TLS_DIR}/ca.pem"


def curl_for(cert_prefix, fail=True):
    """curl with the fleet CA and the client certificate of `cert_prefix`."""
    flags = "-sf" if fail else "-s"
    return (f"curl {flags} --max-time 30 --cacert {CA} "
            f"--cert {TLS_DIR}/{cert_prefix}-cert.pem --key {TLS_DIR}/{cert_prefix}-key.pem")


CURL = curl_for(CERT_PREFIX)
# Set by seed_admin_key(): the admin API key, its SHA-256, and the curl header option.
TEST_KEY = None
KEY_HASH = None
AUTH = ""


def seed_admin_key(node, name="test-admin"):
    """Bootstrap the first admin API key on control plane `node` and keep it in TEST_KEY/AUTH."""
    global TEST_KEY, KEY_HASH, AUTH
    out = node.succeed(f"{CURL} -X POST -H 'Content-Type: application/json' "
                       f"-d {shlex.quote(json.dumps({'name': name}))} {API}/api/v1/keys/bootstrap")
    TEST_KEY = json.loads(out)["key"]
    assert TEST_KEY.startswith("nfk-"), f"bootstrap returned an unexpected key: {TEST_KEY!r}"
    KEY_HASH = node.succeed(f"printf %s {shlex.quote(TEST_KEY)} | sha256sum | cut -d' ' -f1").strip()
    AUTH = f"-H 'Authorization: Bearer {TEST_KEY}'"
    return TEST_KEY


def api(node, method, path, body=None, expect=None):
    """Call the control plane API from `node` as the admin; returns (status, parsed JSON or text)."""
    data = ""
    if body is not None:
        data = f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    out = node.succeed(f"{curl_for(CERT_PREFIX, fail=False)} -o /tmp/api-body -w '%{{http_code}}' "
                       f"-X {method} {AUTH} {data} {shlex.quote(API + path)}; echo; cat /tmp/api-body")
    code_line, _, text = out.partition("\n")
    status = int(code_line.strip() or 0)
    if expect is not None:
        assert status == expect, f"{method} {path}: expected HTTP {expect}, got {status}: {text}"
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def api_get(node, path):
    return api(node, "GET", path, expect=200)[1]


def list_machines(node, tags=()):
    query = "&".join(f"tag={t}" for t in tags)
    return api_get(node, "/api/v1/machines" + (f"?{query}" if query else ""))


def current_system(node):
    return node.succeed("readlink -f /run/current-system").strip()


def create_release(node, entries, cache_url=None):
    """POST a release; entries = {hostname: store_path}. Returns its id."""
    body = {"entries": [{"hostname": h, "store_path": p, "platform": "x86_64-linux"} for h, p in entries.items()]}
    if cache_url:
        body["cache_url"] = cache_url
    _, rel = api(node, "POST", "/api/v1/releases", body, expect=201)
    assert rel["id"].startswith("rel-"), rel
    return rel["id"]


def rollout_request(release_id, tags=None, hosts=None, strategy="all_at_once", batch_sizes=None,
                    failure_threshold="0", on_failure="pause", health_timeout=60, seed=None):
    """The body of POST /api/v1/rollouts (defaults as the seed's helper)."""
    body = {"release_id": release_id, "strategy": strategy, "failure_threshold": failure_threshold,
            "on_failure": on_failure, "health_timeout": health_timeout,
            "target": {"tags": tags} if tags is not None else {"hosts": hosts}}
    if batch_sizes is not None:
        body["batch_sizes"] = batch_sizes
    if seed is not None:
        body["seed"] = seed
    return body


def plan_rollout(node, release_id, **kw):
    """POST /api/v1/rollouts/plan: the batches a rollout would have, nothing written."""
    return api(node, "POST", "/api/v1/rollouts/plan", rollout_request(release_id, **kw), expect=200)[1]


def create_rollout(node, release_id, **kw):
    """POST a rollout and return its id (keyword arguments as rollout_request)."""
    _, r = api(node, "POST", "/api/v1/rollouts", rollout_request(release_id, **kw), expect=201)
    assert r["rollout_id"].startswith("r-"), r
    return r["rollout_id"]


def rollout(node, rollout_id):
    return api_get(node, f"/api/v1/rollouts/{rollout_id}")


def wait_rollout_status(node, rollout_id, status, timeout=120):
    """Poll the rollout every second until its status is `status`; fail on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = rollout(node, rollout_id)
        if last["status"] == status:
            return last
        time.sleep(1)
    raise AssertionError(f"rollout {rollout_id} not {status} within {timeout} s; last: {json.dumps(last)[:2000]}")


def events(node, after=0, stream=None, wait=0):
    """Raw events from GET /api/v1/events (JSON lines: seq, at_ms, actor, stream, kind, data)."""
    query = f"after={after}"
    if stream:
        query += f"&stream={stream}"
    if wait:
        query += f"&wait={wait}"
    out = node.succeed(f"{CURL} --max-time {30 + wait} {AUTH} '{API}/api/v1/events?{query}'")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def kinds(evs):
    return [e["kind"] for e in evs]


def assert_in_order(seq, expected):
    """Every item of `expected` appears in `seq`, in this order (others may come between)."""
    it = iter(seq)
    for item in expected:
        assert any(x == item for x in it), f"{item!r} missing or out of order in {seq}"


def use_admin_key(key):
    """Use `key` (e.g. printed by `nixfleet bootstrap`) for the API helpers above."""
    global TEST_KEY, KEY_HASH, AUTH
    TEST_KEY = key
    KEY_HASH = None
    AUTH = f"-H 'Authorization: Bearer {key}'"


def wait_for(predicate, timeout=60, what="the condition"):
    """Call `predicate` every second until it returns a true value (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(1)


def machine_status(node, machine_id):
    """One machine from GET /api/v1/machines, or None."""
    return next((m for m in list_machines(node) if m["machine_id"] == machine_id), None)


def cli_env(cert_prefix, url="https://cp:8080", key=None):
    """Environment for the nixfleet CLI on a host holding the client certificate of `cert_prefix`."""
    env = (f"NIXFLEET_CONTROL_PLANE_URL={url} NIXFLEET_CA_CERT={CA} "
           f"NIXFLEET_CLIENT_CERT={TLS_DIR}/{cert_prefix}-cert.pem NIXFLEET_CLIENT_KEY={TLS_DIR}/{cert_prefix}-key.pem")
    if key:
        env += f" NIXFLEET_API_KEY={key}"
    return env


FAKE_FLAKE = "/tmp/fake-flake"


def make_fake_flake(node, hosts, path=FAKE_FLAKE):
    """A git flake on `node` whose nixosConfigurations.<host>.config.system.build.toplevel is a
    fake system (real derivation, see fake-system.nix). hosts = {host: {"version": "2", "tags": [...]}}."""
    entries = "\n".join(
        f'      "{h}" = mk "{h}" "{spec.get("version", "2")}" [ {" ".join(json.dumps(t) for t in spec.get("tags", []))} ];'
        for h, spec in hosts.items())
    flake = f"""{{
  outputs = {{ self }}:
    let
      mk = host: version: tags: {{
        config.system.build.toplevel = import ./fake-system.nix {{ inherit host version; system = "x86_64-linux"; }};
        config.services.nixfleet-agent.tags = tags;
        pkgs.system = "x86_64-linux";
      }};
    in {{
      nixosConfigurations = {{
{entries}
      }};
    }};
}}
"""
    node.succeed(f"rm -rf {path} && mkdir -p {path}",
                 f"cp /etc/nixfleet-vmtests/fake-system.nix {path}/fake-system.nix",
                 f"cat > {path}/flake.nix <<'FLAKE'\n{flake}FLAKE",
                 f"cd {path} && git init -q && git add -A && "
                 "git -c user.email=vmtests@example.org -c user.name=vmtests commit -qm 'fake flake'")
    return path


def build_fake_system(node, host, version, variant="", delay=None):
    """Build a fake system generation in `node`'s own store; returns its store path.
    `variant` builds one that fails on purpose (see fake-system.nix): switch-fails, exit4, hang,
    slow (its switch sleeps `delay` seconds first), unhealthy."""
    extra = f" --argstr variant {variant}" if variant else ""
    if delay is not None:
        extra += f" --argstr delay {int(delay)}"
    return node.succeed(f"nix-build /etc/nixfleet-vmtests/fake-system.nix --argstr host {host} "
                        f"--argstr version {version}{extra} --no-out-link").strip()


# What a generation's switch-to-configuration leaves on the host (fake-system.nix).
SWITCH_LOG = "/var/lib/fake-system/switch.log"
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"


def system_profile(node):
    return node.succeed(f"readlink -f {SYSTEM_PROFILE}").strip()


def demo_answer(node):
    """What the running generation's demo service answers on :9000 (status and body), or (0, "")."""
    out = node.succeed("curl -s --max-time 5 -o /tmp/demo-body -w '%{http_code}' http://localhost:9000/ || true; "
                       "echo; cat /tmp/demo-body 2>/dev/null || true")
    code, _, body = out.partition("\n")
    return int(code.strip() or 0), body.strip()


def switch_attempts(node, label):
    """How many times switch-to-configuration of generation `label` (version plus "-variant") was
    started on `node` (boot activations included)."""
    out = node.succeed(f"grep -c '^{label} switch start$' {SWITCH_LOG} || true").strip()
    return int(out or 0)


def assert_switches(node, label, n):
    """switch-to-configuration of generation `label` was started exactly `n` times on `node`."""
    got = switch_attempts(node, label)
    assert got == n, (f"{node.name}: {label} switched {got} times, expected {n}; switch log:\n"
                      + node.succeed(f"cat {SWITCH_LOG} || true"))


def assert_runs(node, host, path, version, timeout=30):
    """`node` itself runs generation `path`: the current-system link, the system profile, the
    closure registered in its own Nix database, the activation marker, and the demo service of
    that generation answering (it may still be restarting, hence the wait)."""
    cur = current_system(node)
    assert cur == path, f"{host}: /run/current-system is {cur}, expected {path}"
    prof = system_profile(node)
    assert prof == path, f"{host}: the system profile is {prof}, expected {path}"
    node.succeed(f"nix-store -q --references {path}")
    active = node.succeed("cat /var/lib/fake-system/active").strip()
    assert active == f"active={version}", f"{host}: activation marker {active!r}, expected active={version}"
    want = f"fake-app {host} version {version}"
    last = [None]

    def answers():
        last[0] = demo_answer(node)
        return last[0] == (200, want)
    wait_for(answers, timeout=timeout, what=f"{host}'s demo service to answer {want!r} (last: {last[0]})")


def machine_events(node, machine, kind=None, after=0):
    evs = events(node, after=after, stream=f"machine:{machine}")
    return [e for e in evs if kind is None or e["kind"] == kind]


def reports(node, machine, after=0):
    """The data of every ReportReceived of `machine` (generation, success, message, dry_run, …)."""
    return [e["data"] for e in machine_events(node, machine, "ReportReceived", after)]


def assert_deployed(node, machine, path, after=0):
    """The raw stream of `machine` holds the move to `path`: its desired generation was set to it,
    the agent reported `deployed` on it, and a passing health report for it followed."""
    evs = machine_events(node, machine, after=after)
    desired = [e for e in evs if e["kind"] == "DesiredGenerationSet" and e["data"]["path"] == path]
    assert desired, f"{machine}: no DesiredGenerationSet {path} in {kinds(evs)}"
    deployed = [e for e in evs if e["kind"] == "ReportReceived" and e["data"]["generation"] == path
                and e["data"]["success"] and e["data"]["message"] == "deployed" and not e["data"].get("dry_run")]
    assert deployed, f"{machine}: no 'deployed' report on {path}: {[e['data'] for e in evs if e['kind'] == 'ReportReceived']}"
    assert deployed[0]["seq"] > desired[0]["seq"], (desired[0], deployed[0])
    healthy = [e for e in evs if e["kind"] == "HealthReported" and e["data"]["generation"] == path
               and e["data"]["all_passed"] and e["seq"] >= desired[0]["seq"]]
    assert healthy, f"{machine}: no passing HealthReported on {path}"
    return deployed[0]


def wait_healthy(node, machine_ids, timeout=30):
    """Wait until the control plane holds a passing health report from each machine (agents' first
    checks can run while the machine is still booting)."""
    def ok():
        status = {m["machine_id"]: m for m in list_machines(node)}
        return all(status.get(i, {}).get("health") == "healthy" for i in machine_ids)
    wait_for(ok, timeout=timeout, what=f"{', '.join(machine_ids)} to report healthy")


# The cache server (harmonia on both sides) -------------------------------------------------

# harmonia's NAR URL: nar/<nar hash, nix base32>.nar?hash=<store path hash>
# (harmonia-cache/src/main.rs nar_route; harmonia-store-nar-info build_narinfo).
NAR_URL_RE = re.compile(r"^nar/([0-9a-df-np-sv-z]{52})\.nar\?hash=([0-9a-df-np-sv-z]{32})$")
NAR_ROUTE = "/nar/{narhash:[0123456789abcdfghijklmnpqrsvwxyz]{52}}.nar"


def narinfo(node, path, cache="http://cache:5000"):
    """The narinfo the cache serves for store path `path`, as a dict (Sig and References as lists)."""
    text = node.succeed(f"curl -sf {cache}/{os.path.basename(path)[:32]}.narinfo")
    fields = {"Sig": [], "References": []}
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == "Sig":
            fields["Sig"].append(value)
        elif key == "References":
            fields["References"] = value.split()
        else:
            fields[key] = value
    return fields


def assert_served_by_harmonia(client, cache_node, path, cache="http://cache:5000"):
    """What harmonia serves for `path`, checked against the cache host's own database: the narinfo
    fields, the signature by the test cache key, and the NAR at its URL, whose hash is NarHash."""
    info = narinfo(client, path, cache)
    assert info["StorePath"] == path, info
    url = NAR_URL_RE.match(info.get("URL", ""))
    assert url and url.group(2) == os.path.basename(path)[:32], f"not harmonia's NAR URL form: {info}"
    assert info["NarHash"] == cache_node.succeed(f"nix-store -q --hash {path}").strip() == f"sha256:{url.group(1)}", info
    assert info["NarSize"] == cache_node.succeed(f"nix-store -q --size {path}").strip(), info
    refs = sorted(os.path.basename(r) for r in cache_node.succeed(f"nix-store -q --references {path}").split())
    assert sorted(info["References"]) == refs, (info, refs)
    assert info["Compression"] == "none", info
    assert [s.split(":")[0] for s in info["Sig"]] == ["nixfleet-test-cache-1"], info
    served = client.succeed(f"curl -sf '{cache}/{info['URL']}' | sha256sum | cut -d' ' -f1").strip()
    assert client.succeed(f"nix-hash --type sha256 --to-base32 {served}").strip() == url.group(1), served
    return info


def cache_requests(node, route=NAR_ROUTE, status="200", cache="http://localhost:5000"):
    """How many GETs of `route` harmonia answered with `status` (its /metrics counter)."""
    metrics = node.succeed(f"curl -sf {cache}/metrics")
    want = f'harmonia_http_requests_total{{method="GET",path="{route}",status="{status}"}} '
    return sum(int(line[len(want):]) for line in metrics.splitlines() if line.startswith(want))
