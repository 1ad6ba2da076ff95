#!/usr/bin/env bash
# Regenerates the fixed test PKI that fuzz_client_hello builds its server context from, and that
# tests/fuzz/make_seeds.py uses to capture real handshakes for the seed corpus. The files are
# committed so that seeds (which carry a client certificate signed by this CA, and tickets naming
# these ticket keys) keep matching the context. Test-only keys: never use them anywhere else.
# Everything is valid for 100 years. Rerunning changes every key: regenerate the seeds after it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
rsa() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }
days=36500

# CA
ec ca.key
openssl req -x509 -new -key ca.key -subj "/O=ferry fuzz/CN=ferry fuzz CA" -days $days \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

self_signed() { # NAME KEYKIND CN SANS
  "$2" "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$3" -days $days \
    -addext "basicConstraints=CA:FALSE" -addext "subjectAltName=$4" -out "$1.crt"
}
self_signed server-ec ec localhost "DNS:localhost,IP:127.0.0.1"
self_signed server-rsa rsa localhost "DNS:localhost,IP:127.0.0.1"
self_signed sni-rsa rsa rsa.fuzz.test "DNS:rsa.fuzz.test"
self_signed sni-wild ec "*.wild.fuzz.test" "DNS:*.wild.fuzz.test"

client() { # NAME CN SANS
  ec "$1.key"
  openssl req -new -key "$1.key" -subj "/O=ferry fuzz/CN=$2" -out "$work/$1.csr"
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\nsubjectAltName=%s\n' "$3" \
    >"$work/$1.ext"
  openssl x509 -req -in "$work/$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -CAserial "$work/ca.srl" -days $days -extfile "$work/$1.ext" -out "$1.crt" 2>/dev/null
}
client client client "DNS:client.fuzz.test,URI:spiffe://fuzz.test/client"
client intruder intruder "DNS:intruder.fuzz.test"
client revoked revoked "DNS:client.fuzz.test"

# A CRL revoking "revoked", via a throwaway `openssl ca` setup.
touch "$work/index.txt"
echo 01 >"$work/crlnumber"
cat >"$work/ca.cnf" <<CNF
[ca]
default_ca = fuzz
[fuzz]
database = $work/index.txt
crlnumber = $work/crlnumber
default_md = sha256
default_crl_days = $days
CNF
openssl ca -config "$work/ca.cnf" -keyfile ca.key -cert ca.crt -revoke revoked.crt 2>/dev/null
openssl ca -config "$work/ca.cnf" -keyfile ca.key -cert ca.crt -gencrl -out crl.pem 2>/dev/null

# Two session-ticket keys (80 bytes each, as `openssl rand -hex 80`).
{ openssl rand -hex 80; openssl rand -hex 80; } >tickets.keys
chmod 600 ./*.key tickets.keys
echo "make-certs: regenerated $(ls | wc -l) files in $(pwd)"
