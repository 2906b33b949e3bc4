#!/usr/bin/env bash
# Schemathesis (from PyPI) against a live nixfleet control plane with mutual TLS on loopback:
# every operation of docs/openapi.yaml, positive and negative data, bounded in examples and time.
# Checks: no 5xx (not_a_server_error) plus status codes, content types and response bodies that
# conform to the document; and the server must still be alive afterwards.
# Usage: tests/schemathesis/run.sh   (env: ST_MAX_EXAMPLES=30, ST_TIME_LIMIT=150 seconds,
#        CP_BIN=path to nixfleet-control-plane, else it is built with cargo; ST_VERBOSE=1 shows the log)
# Prints one summary line "schemathesis: ..." and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
ST_VERSION=4.32.5
max_examples=${ST_MAX_EXAMPLES:-30}
time_limit=${ST_TIME_LIMIT:-150}
checks=${ST_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance}

fail() { echo "schemathesis: FAILED: $*"; exit 1; }

if ! command -v schemathesis >/dev/null 2>&1 || ! schemathesis --version 2>/dev/null | grep -q "$ST_VERSION"; then
  pip install -q "schemathesis==$ST_VERSION" >/dev/null 2>&1 || fail "pip install schemathesis==$ST_VERSION"
  hash -r
fi
command -v openssl >/dev/null || fail "openssl is needed for the test PKI"
command -v curl >/dev/null || fail "curl is needed"

if [ -z "${CP_BIN:-}" ]; then
  cargo build -q -p nixfleet-engine --bin nixfleet-control-plane || fail "cargo build"
  CP_BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/nixfleet-control-plane
fi
[ -x "$CP_BIN" ] || fail "no control plane binary at $CP_BIN"

work=$(mktemp -d /tmp/nixfleet-schemathesis.XXXXXX)
cp_pid=
cleanup() {
  if [ -n "$cp_pid" ] && kill -0 "$cp_pid" 2>/dev/null; then kill "$cp_pid"; wait "$cp_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Test PKI: a CA, the server's certificate for 127.0.0.1/localhost, and one client certificate with
# CN web-01 (the machine id of the document's examples, so agent routes are reached too; operator
# routes authenticate by the bearer key).
pki=$work/pki
mkdir -p "$pki"
(
  cd "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=nixfleet schemathesis CA" \
    -keyout ca-key.pem -out ca.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  for who in cp web-01; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" -keyout "$who-key.pem" -out "$who.csr"
    if [ "$who" = cp ]; then
      printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > ext.cnf
    else
      printf 'extendedKeyUsage=clientAuth\n' > ext.cnf
    fi
    openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile ext.cnf -out "$who-cert.pem"
  done
) >/dev/null 2>&1 || fail "cannot make the test PKI with openssl"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$CP_BIN" --listen "127.0.0.1:$port" --data-dir "$work/data" --tls-cert "$pki/cp-cert.pem" --tls-key "$pki/cp-key.pem" \
  --client-ca "$pki/ca.pem" >"$work/cp.log" 2>&1 &
cp_pid=$!
base=https://127.0.0.1:$port
curl_() { curl -sS --cacert "$pki/ca.pem" --cert "$pki/web-01-cert.pem" --key "$pki/web-01-key.pem" "$@"; }
for _ in $(seq 100); do
  curl_ -o /dev/null "$base/health" 2>/dev/null && break
  kill -0 "$cp_pid" 2>/dev/null || fail "control plane exited at start: $(tail -5 "$work/cp.log")"
  sleep 0.1
done
key=$(curl_ -X POST -H 'content-type: application/json' -d '{"name":"schemathesis"}' "$base/api/v1/keys/bootstrap" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])') || fail "bootstrap"

set +e
# Run from the work directory: schemathesis keeps a cache (.schemathesis/) in the current directory.
(cd "$work" && exec env SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$root/tests/schemathesis" timeout --signal=INT "$((time_limit + 20))" \
  schemathesis run "$root/docs/openapi.yaml" --url "$base" \
  --header "Authorization: Bearer $key" \
  --tls-verify "$pki/ca.pem" --request-cert "$pki/web-01-cert.pem" --request-cert-key "$pki/web-01-key.pem" \
  --checks "$checks" --max-examples "$max_examples" --seed 1 --workers 2 --request-timeout 10 \
  --phases examples,coverage,fuzzing --suppress-health-check all --generation-database none \
  --no-color --report junit --report-dir "$work/report") >"$work/st.log" 2>&1 &
st_pid=$!
# A wall-clock bound: stop schemathesis gracefully after time_limit seconds (it reports what it ran).
( sleep "$time_limit" & sp=$!; trap 'kill "$sp" 2>/dev/null; exit 0' TERM; wait "$sp"; touch "$work/time-limit"; kill -INT "$st_pid" 2>/dev/null ) &
timer=$!
wait "$st_pid"
st_rc=$?
kill "$timer" 2>/dev/null
wait "$timer" 2>/dev/null
set -e

if ! kill -0 "$cp_pid" 2>/dev/null; then
  cat "$work/st.log"; tail -20 "$work/cp.log"
  fail "the control plane died during the run"
fi
health=$(curl_ "$base/health" 2>/dev/null || true)
[ "$health" = ok ] || fail "the control plane no longer answers /health"
summary=$(grep -E '^[0-9]+ (passed|failed|errors?)|passed|failed' "$work/st.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
last=$(grep -E '^=+ .* =+$' "$work/st.log" | tail -1)
if [ "$st_rc" -ne 0 ] && [ -e "$work/time-limit" ] && ! printf '%s' "$last" | grep -qE 'failure|error'; then
  # Stopped by the time limit with nothing found so far: what ran passed.
  st_rc=0
  summary="${summary:-finished}; stopped at the ${time_limit} s limit"
fi
if [ "$st_rc" -ne 0 ]; then
  cat "$work/st.log"
  grep -i 'internal error' "$work/cp.log" | tail -5 || true
  fail "schemathesis exit $st_rc (${summary:-no summary}); server alive"
fi
[ -n "${ST_VERBOSE:-}" ] && cat "$work/st.log"
echo "schemathesis: ok: ${summary:-finished}; checks $checks; server alive after the run"
