# The shell script that makes the VM tests' key material, as text.
#
# Why it exists: the seed builds its certificates at evaluation/build time, so
# a VM test needs no setup step and every node of a test sees the same fleet
# PKI. This is the same set the local harness makes (vmtests/driver/pki.py):
# an EC P-256 CA; for cp and every name, a certificate with CN = the name and
# SANs name and name.test (cp also localhost and 127.0.0.1), PKCS#8 keys; the
# root SSH key pair; and a binary-cache signing key pair in Nix's format.
# Builtins only, so tests/nix runs this very script with the host's openssl.
#
# For testing only: every private key made here ends up in the Nix store,
# which is world-readable. Never use this for a real fleet.
{
  # Names besides "cp" that get a client certificate.
  hostnames,
  cacheKeyName ? "nixfleet-test-cache-1",
}:
let
  # vmtests/driver/pki.py EXTRA_CERT_NAMES: every run has these too.
  extraCertNames = [
    "operator"
    "builder"
    "cache"
    "unauth"
    "wrong-agent"
    "machine"
    "agent"
  ];
  names = builtins.attrNames (
    builtins.listToAttrs (
      map (n: {
        name = n;
        value = null;
      }) ([ "cp" ] ++ hostnames ++ extraCertNames)
    )
  );
  # cp-<n>: one of several control planes (vm-ha-failover), also called on localhost.
  sans =
    n:
    if n == "cp" then
      "DNS:cp,DNS:cp.test,DNS:localhost,IP:127.0.0.1"
    else if builtins.substring 0 3 n == "cp-" then
      "DNS:${n},DNS:${n}.test,DNS:localhost,IP:127.0.0.1"
    else
      "DNS:${n},DNS:${n}.test";
  certFor = n: ''
    printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=serverAuth,clientAuth' 'subjectAltName=${sans n}' > "${n}.ext"
    openssl ecparam -name prime256v1 -genkey -noout -out "${n}-key.ec.pem"
    openssl pkcs8 -topk8 -nocrypt -in "${n}-key.ec.pem" -out "${n}-key.pem"
    openssl req -new -key "${n}-key.pem" -subj "/CN=${n}" -out "${n}.csr"
    openssl x509 -req -in "${n}.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 -sha256 \
      -extfile "${n}.ext" -out "${n}-cert.pem" 2>/dev/null
    rm "${n}.csr" "${n}.ext" "${n}-key.ec.pem"
  '';
in
{
  inherit names extraCertNames;

  # Writes $out/tls/{ca.pem,<name>-cert.pem,<name>-key.pem}, $out/ssh/id_ed25519{,.pub}
  # and $out/cache/cache-key.{sec,pub} plus nix-trusted-keys.conf (a nix.conf
  # line trusting the public key). Needs openssl, ssh-keygen, base64, tail,
  # cat and mkdir on PATH.
  script = ''
    set -eu
    mkdir -p "$out/tls" "$out/ssh" "$out/cache"
    cd "$out/tls"
    openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
    openssl req -x509 -new -key ca-key.pem -sha256 -days 3650 -subj /CN=nixfleet-test-ca -out ca.pem \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    ${builtins.concatStringsSep "\n" (map certFor names)}
    # Nobody in the fleet may sign certificates.
    rm -f ca-key.pem ca.srl
    chmod 600 ./*-key.pem

    cd "$out/ssh"
    ssh-keygen -q -t ed25519 -N "" -C nixfleet-vmtests -f id_ed25519

    # Nix's binary-cache key format: "name:" + base64(ed25519 seed ++ public key)
    # for the secret, "name:" + base64(public key) for the public one. The raw
    # keys are the last 32 bytes of the DER encodings.
    cd "$out/cache"
    openssl genpkey -algorithm ed25519 -outform DER -out key.der
    openssl pkey -inform DER -in key.der -pubout -outform DER -out pub.der
    { tail -c 32 key.der; tail -c 32 pub.der; } > sec.raw
    printf '%s:%s' ${cacheKeyName} "$(base64 -w0 sec.raw)" > cache-key.sec
    printf '%s:%s' ${cacheKeyName} "$(tail -c 32 pub.der | base64 -w0)" > cache-key.pub
    printf 'trusted-public-keys = %s\n' "$(cat cache-key.pub)" > nix-trusted-keys.conf
    rm key.der pub.der sec.raw
    chmod 600 cache-key.sec
  '';
}
