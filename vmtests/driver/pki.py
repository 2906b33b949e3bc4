"""Test PKI and keys for one harness run, made with openssl and ssh-keygen.

Why: the seed's VM tests use one build-time certificate set (an EC P-256 CA, a
control-plane certificate with CN cp and SANs cp and localhost, and a client
certificate per host whose CN is the host name). The local harness makes the
same set at run time, plus the run's SSH key and binary-cache signing key.
For testing only: these keys are thrown away with the run directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# Names that get a client certificate in every run, besides the scenario's nodes
# (the seed's shared certificate set has these too).
EXTRA_CERT_NAMES = ["operator", "builder", "cache", "unauth", "wrong-agent", "machine", "agent"]


def _run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_tls(out: Path, names: list[str]) -> None:
    """Write ca.pem and <name>-cert.pem / <name>-key.pem for cp and every name into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    _run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca-key.pem"], out)
    _run(
        ["openssl", "req", "-x509", "-new", "-key", "ca-key.pem", "-sha256", "-days", "3650",
         "-subj", "/CN=nixfleet-test-ca", "-out", "ca.pem",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        out,
    )
    for name in sorted(set(["cp"] + names + EXTRA_CERT_NAMES)):
        sans = f"DNS:{name},DNS:{name}.test"
        if name == "cp":
            sans = "DNS:cp,DNS:cp.test,DNS:localhost,IP:127.0.0.1"
        elif name.startswith("cp-"):
            # One of several control planes (vm-ha-failover): its own name, and localhost for
            # the prelude's API calls made on the host itself.
            sans += ",DNS:localhost,IP:127.0.0.1"
        ext = out / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            f"subjectAltName={sans}\n"
        )
        _run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}-key.ec.pem"], out)
        # PKCS#8, which every TLS stack reads.
        _run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", f"{name}-key.ec.pem", "-out", f"{name}-key.pem"], out)
        _run(["openssl", "req", "-new", "-key", f"{name}-key.pem", "-subj", f"/CN={name}", "-out", f"{name}.csr"], out)
        _run(
            ["openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}-cert.pem"],
            out,
        )
        for tmp in (f"{name}.csr", f"{name}.ext", f"{name}-key.ec.pem"):
            (out / tmp).unlink()
    (out / "ca-key.pem").unlink()  # nobody in the fleet may sign
    for f in out.glob("*-key.pem"):
        f.chmod(0o600)


def make_ssh_key(out: Path) -> None:
    """The run's root SSH key pair (id_ed25519, id_ed25519.pub)."""
    out.mkdir(parents=True, exist_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nixfleet-vmtests", "-f", "id_ed25519"], out)


def make_cache_key(out: Path) -> str:
    """The run's binary-cache signing key pair; returns the public key line."""
    out.mkdir(parents=True, exist_ok=True)
    _run(["nix-store", "--generate-binary-cache-key", "nixfleet-test-cache-1", "cache-key.sec", "cache-key.pub"], out)
    return (out / "cache-key.pub").read_text().strip()
