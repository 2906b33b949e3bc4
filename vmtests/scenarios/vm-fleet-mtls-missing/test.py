start_all()
cp.wait_for_unit("nixfleet-control-plane.service")
cp.wait_for_open_port(8080)
client.wait_for_unit("multi-user.target")

NO_CERT = "curl -sv --max-time 10 --cacert /etc/nixfleet-tls/ca.pem"
WITH_CERT = f"{NO_CERT} --cert /etc/nixfleet-tls/client-cert.pem --key /etc/nixfleet-tls/client-key.pem"
REPORT = json.dumps({"machine_id": "client", "current_generation": "", "success": True, "message": "probe"})
# The alert the server sends when it requires a client certificate and gets none (RFC 8446
# certificate_required, 116; a TLS 1.2 server would send handshake_failure or bad_certificate),
# as OpenSSL names it. Not a word every TLS session prints, as "handshake" would be.
TLS_ALERT = re.compile(r"alert (certificate required|handshake failure|bad certificate)", re.I)


def tls_refused(status, out):
    """curl failed in TLS (35: connect error, 56: the alert arrives with the first read under
    TLS 1.3) because the server sent an alert."""
    return status in (35, 56) and TLS_ALERT.search(out) is not None


with subtest("Without a client certificate /health fails in the TLS handshake"):
    status, out = client.execute(f"{NO_CERT} https://cp:8080/health 2>&1")
    assert tls_refused(status, out), (status, out)
    assert "< HTTP" not in out, out

with subtest("Without a client certificate the report route fails in the TLS handshake"):
    status, out = client.execute(f"{NO_CERT} -X POST -H 'Content-Type: application/json' -d {shlex.quote(REPORT)} "
                                 "https://cp:8080/api/v1/machines/client/report 2>&1")
    assert tls_refused(status, out), (status, out)
    assert "< HTTP" not in out, out

with subtest("With a fleet client certificate the handshake completes and HTTP answers"):
    out = client.succeed(f"{WITH_CERT} https://cp:8080/health 2>&1")
    assert "< HTTP/" in out, out
    # The negative check can tell the two apart: no alert in a session that completed.
    assert not tls_refused(0, out) and TLS_ALERT.search(out) is None, out
    code = client.succeed(f"{WITH_CERT} -o /dev/null -w '%{{http_code}}' -X POST -H 'Content-Type: application/json' "
                          f"-d {shlex.quote(REPORT)} https://cp:8080/api/v1/machines/client/report 2>/dev/null")
    assert code != "000", code
