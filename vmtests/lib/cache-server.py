#!/usr/bin/python3
"""Stand-in for harmonia in the local vmtests: serve this host's Nix store as a signed binary cache.

Why: on NixOS the cache node runs services.nixfleet-cache-server (harmonia), which
serves the host's own store over the binary-cache HTTP protocol and signs on the
fly. harmonia cannot be installed here, so this small server does the same with
Debian's nix tools:

  GET /nix-cache-info        store directory and priority
  GET|HEAD /<hash>.narinfo   path metadata, signed with --signing-key-file
  GET /nar/<hash>.nar        the path's NAR (uncompressed), from `nix-store --dump`

Paths are looked up in the local Nix database; a path that is not valid there is
a 404, exactly as harmonia answers. Signatures are added to the database with
`nix store sign` the first time a path is asked for.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STORE = "/nix/store"
HASH_RE = re.compile(r"^/([0-9a-df-np-sv-z]{32})\.narinfo$")
NAR_RE = re.compile(r"^/nar/([0-9a-df-np-sv-z]{32})\.nar$")
NIX_ENV = dict(os.environ, NIX_CONFIG="experimental-features = nix-command")


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, env=NIX_ENV).stdout.strip()


def path_for(hash_part: str) -> str | None:
    """The valid store path whose hash part is `hash_part`, or None."""
    try:
        names = [n for n in os.listdir(STORE) if n.startswith(hash_part + "-")]
    except OSError:
        return None
    for name in names:
        path = f"{STORE}/{name}"
        if subprocess.run(["nix-store", "--check-validity", path], capture_output=True).returncode == 0:
            return path
    return None


def narinfo(path: str, key_file: str) -> str:
    run("nix", "store", "sign", "--key-file", key_file, path)
    info = json.loads(run("nix", "path-info", "--json", "--sigs", path))[0]
    refs = [os.path.basename(r) for r in run("nix-store", "-q", "--references", path).split()]
    deriver = run("nix-store", "-q", "--deriver", path)
    lines = [
        f"StorePath: {path}",
        f"URL: nar/{os.path.basename(path)[:32]}.nar",
        "Compression: none",
        f"NarHash: {run('nix-store', '-q', '--hash', path)}",
        f"NarSize: {run('nix-store', '-q', '--size', path)}",
        f"References: {' '.join(refs)}",
    ]
    if deriver and deriver != "unknown-deriver":
        lines.append(f"Deriver: {os.path.basename(deriver)}")
    lines += [f"Sig: {s}" for s in info.get("signatures", [])]
    if info.get("ca"):
        lines.append(f"CA: {info['ca']}")
    return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    key_file = ""
    priority = 30

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.path == "/nix-cache-info":
            body = f"StoreDir: {STORE}\nWantMassQuery: 1\nPriority: {self.priority}\n".encode()
            return self._send(200, body)
        m = HASH_RE.match(self.path)
        if m:
            path = path_for(m.group(1))
            if path is None:
                return self._send(404, b"not found\n")
            try:
                return self._send(200, narinfo(path, self.key_file).encode(), "text/x-nix-narinfo")
            except subprocess.CalledProcessError as e:
                sys.stderr.write(f"narinfo {path}: {e.stderr}\n")
                return self._send(500, b"internal error\n")
        m = NAR_RE.match(self.path)
        if m:
            path = path_for(m.group(1))
            if path is None:
                return self._send(404, b"not found\n")
            nar = subprocess.run(["nix-store", "--dump", path], capture_output=True, check=True).stdout
            return self._send(200, nar, "application/x-nix-nar")
        return self._send(404, b"not found\n")

    def log_message(self, fmt: str, *args) -> None:
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--signing-key-file", required=True)
    args = ap.parse_args()
    if not os.access(args.signing_key_file, os.R_OK):
        print(f"cache-server: cannot read signing key {args.signing_key_file}", file=sys.stderr)
        return 1
    Handler.key_file = args.signing_key_file
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    print(f"cache-server: serving {STORE} on :{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
