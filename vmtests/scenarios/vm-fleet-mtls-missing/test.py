start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
client.wait_for_unit("multi-user.target")

TLS_MARKERS = ["alert", "handshake", "certificate required", "ssl_error", "ssl routines", "tlsv13"]
NO_CERT = "curl -sv --max-time 10 --cacert /etc/nixfleet-tls/ca.pem"
WITH_CERT = f"{NO_CERT} --cert /etc/nixfleet-tls/client-cert.pem --key /etc/nixfleet-tls/client-key.pem"
REPORT = json.dumps({"machine_id": "client", "current_generation": "", "success": True, "message": "probe"})


def tls_refused(out):
    low = out.lower()
    return any(m in low for m in TLS_MARKERS)


with subtest("Without a client certificate /health fails in the TLS handshake"):
    out = client.fail(f"{NO_CERT} https://cp:8080/health 2>&1")
    assert tls_refused(out), out
    assert "< HTTP" not in out, out

with subtest("Without a client certificate the report route fails in the TLS handshake"):
    out = client.fail(f"{NO_CERT} -X POST -H 'Content-Type: application/json' -d {shlex.quote(REPORT)} "
                      "https://cp:8080/api/v1/machines/client/report 2>&1")
    assert tls_refused(out), out
    assert "< HTTP" not in out, out

with subtest("With a fleet client certificate the handshake completes and HTTP answers"):
    out = client.succeed(f"{WITH_CERT} https://cp:8080/health 2>&1")
    assert "< HTTP/" in out, out
    code = client.succeed(f"{WITH_CERT} -o /dev/null -w '%{{http_code}}' -X POST -H 'Content-Type: application/json' "
                          f"-d {shlex.quote(REPORT)} https://cp:8080/api/v1/machines/client/report 2>/dev/null")
    assert code != "000", code
