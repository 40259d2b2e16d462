#!/usr/bin/env bash
# Regenerates the plug-in CA fixtures the pki tests load. They imitate what users bring from
# Istio's `tools/certs` Makefile (`make root-ca`, `make intermediate-cacerts`): an RSA root, an
# RSA intermediate whose key is in the traditional PKCS#1 form ("RSA PRIVATE KEY", what
# OpenSSL 1.x writes), and cert-chain.pem = intermediate + root. A second set uses EC keys in
# SEC1 form ("EC PRIVATE KEY", what `openssl ecparam -genkey` writes). Valid for 100 years so
# the tests never expire; test keys only, never used anywhere else.
# RSA 2048 rather than Istio's 4096 keeps the tests fast; the code path is the same.
set -euo pipefail
cd "$(dirname "$0")"
days=36500

ca_ext() {
  printf '%s\n' "basicConstraints=critical,CA:TRUE" \
    "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,keyCertSign" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid:always"
}

# --- Istio-style RSA plug-in CA ---
mkdir -p istio-rsa && cd istio-rsa
openssl genrsa -traditional -out root-key.pem 2048 2>/dev/null
openssl req -x509 -new -key root-key.pem -days "$days" -sha256 -out root-cert.pem \
  -subj "/O=Istio/CN=Root CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,keyCertSign"
openssl genrsa -traditional -out ca-key.pem 2048 2>/dev/null
openssl req -new -key ca-key.pem -subj "/O=Istio/CN=Intermediate CA/L=cluster1" -out ca.csr
openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
  -days "$days" -sha256 -extfile <(ca_ext) -out ca-cert.pem 2>/dev/null
cat ca-cert.pem root-cert.pem > cert-chain.pem
rm -f ca.csr root-cert.srl root-key.pem
cd ..

# --- EC plug-in CA with SEC1 keys ---
mkdir -p ec-sec1 && cd ec-sec1
openssl ecparam -name prime256v1 -genkey -noout -out root-key.pem
openssl req -x509 -new -key root-key.pem -days "$days" -sha256 -out root-cert.pem \
  -subj "/O=Example Corp/CN=Example Root CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
openssl req -new -key ca-key.pem -subj "/O=Example Corp/OU=Mesh/CN=Example Mesh Intermediate" -out ca.csr
openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
  -days "$days" -sha256 -extfile <(ca_ext) -out ca-cert.pem 2>/dev/null
cat ca-cert.pem root-cert.pem > cert-chain.pem
rm -f ca.csr root-cert.srl root-key.pem
