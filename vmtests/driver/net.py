"""The test network: one namespace per host, all on a bridge in a namespace of its own.

Why: test traffic must never leave this machine. The root namespace has a default
route to the outside, so nothing here ever configures or addresses a test host
from it. Each host's namespace has only `lo` and `eth0` on 10.232.0.0/24 and no
default route, so a stray address fails at once instead of leaking out.
"""

from __future__ import annotations

import subprocess

SUBNET = "10.232.0"
FIRST_HOST = 10


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Network:
    """The bridge namespace and one namespace per host, named `<prefix>-<host>`."""

    def __init__(self, prefix: str, hosts: list[str]):
        self.prefix = prefix
        self.hosts = list(hosts)
        self.lan = f"{prefix}-lan"
        self.addresses = {h: f"{SUBNET}.{FIRST_HOST + i}" for i, h in enumerate(self.hosts)}
        self.up_done = False

    def netns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def veth(self, host: str) -> str:
        # Interface names are at most 15 bytes; the index keeps them short and unique in `lan`.
        return f"v{self.hosts.index(host)}"

    def up(self) -> None:
        self.up_done = True
        _ip("netns", "add", self.lan)
        _ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.lan, "link", "set", "br0", "up")
        _ip("-n", self.lan, "link", "set", "lo", "up")
        for h in self.hosts:
            ns = self.netns(h)
            _ip("netns", "add", ns)
            _ip("link", "add", self.veth(h), "netns", self.lan, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.lan, "link", "set", self.veth(h), "master", "br0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[h]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{a} {h} {h}.test" for h, a in self.addresses.items()]
        return "\n".join(lines) + "\n"

    def block(self, host: str) -> None:
        """Cut `host` off the LAN (its side of the link stays up, like a pulled cable)."""
        _ip("-n", self.lan, "link", "set", self.veth(host), "down")

    def unblock(self, host: str) -> None:
        _ip("-n", self.lan, "link", "set", self.veth(host), "up")

    def down(self) -> None:
        for h in self.hosts:
            _ip("netns", "del", self.netns(h), check=False)
        _ip("netns", "del", self.lan, check=False)


def stale_namespaces(prefix_root: str) -> list[str]:
    """Namespaces left by an earlier run of this harness that was killed hard."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix_root)]


def delete_namespace(name: str) -> None:
    _ip("netns", "del", name, check=False)
