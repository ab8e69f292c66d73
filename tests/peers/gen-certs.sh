#!/usr/bin/env bash
# gen-certs.sh OUTDIR : test PKI for TLS ICAP (stunnel / rustls). EC P-256 keys, PKCS#8 PEM.
#   ca.pem / ca.key                 test CA (CA:TRUE)
#   server.pem / server.key         server cert signed by ca: CA:FALSE, serverAuth,
#                                   SAN DNS:localhost, IP:127.0.0.1 (valid 10 years)
#   server-chain.pem                server.pem + ca.pem
#   client.pem / client.key         client cert signed by ca (clientAuth), CN=icap-test-client
#   client-bundle.pem               client.pem + client.key (for tools wanting one file)
#   wrong-ca.pem / wrong-ca.key     an unrelated CA
#   wrong-client.pem / .key         client cert signed by wrong-ca
#   selfsigned.pem / .key           self-signed server cert (CA:FALSE, same SANs) for pinning
#   selfsigned.sha256               SHA-256 of its DER (hex, lower case) and of its SPKI
#   expired.pem / expired.key       server cert signed by ca, valid 2020-01-01..2020-01-02
#   client-v1.pem / .key            X.509 v1 client cert signed by ca (`x509 -req` without
#                                   -extfile, as stunnel how-tos make them), CN=icap-v1-client
#   server-v1.pem / .key            X.509 v1 server cert signed by ca, CN=localhost
# Idempotent: regenerates everything each run. Needs only openssl (3.0 is fine).
set -euo pipefail
out=${1:?usage: gen-certs.sh OUTDIR}
mkdir -p "$out"
cd "$out"
export OPENSSL_CONF=/dev/null   # ignore the system openssl.cnf

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ext_ca="basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash"
ext_server="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"
ext_client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"

mkca() { # name CN
  key "$1.key"
  openssl req -new -x509 -key "$1.key" -out "$1.pem" -days 3650 -subj "/CN=$2" \
    -addext "$(echo "$ext_ca" | sed -n 1p)" -addext "$(echo "$ext_ca" | sed -n 2p)" \
    -addext "$(echo "$ext_ca" | sed -n 3p)"
}
sign() { # name CN ca extensions [days]
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf '%s\n' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
    -out "$1.pem" -days "${5:-3650}" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

mkca ca "ICAP Test CA"
sign server localhost ca "$ext_server"
cat server.pem ca.pem > server-chain.pem
sign client icap-test-client ca "$ext_client"
cat client.pem client.key > client-bundle.pem
# X.509 v1: no -extfile, so no extensions and no version field.
sign_v1() { # name CN
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
    -days 3650 2>/dev/null
  rm -f "$1.csr"
}
sign_v1 client-v1 icap-v1-client
sign_v1 server-v1 localhost
mkca wrong-ca "Unrelated Test CA"
sign wrong-client icap-wrong-client wrong-ca "$ext_client"

# self-signed end-entity server cert (for certificate pinning tests)
key selfsigned.key
printf '%s\n' "$ext_server" | grep -v authorityKeyIdentifier > selfsigned.ext
openssl req -new -key selfsigned.key -subj "/CN=localhost" -out selfsigned.csr
openssl x509 -req -in selfsigned.csr -signkey selfsigned.key -out selfsigned.pem -days 3650 \
  -extfile selfsigned.ext 2>/dev/null
rm -f selfsigned.csr selfsigned.ext
{
  echo "cert-der-sha256 $(openssl x509 -in selfsigned.pem -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1)"
  echo "spki-der-sha256 $(openssl x509 -in selfsigned.pem -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1)"
} > selfsigned.sha256

# expired server cert, signed by the test CA (openssl ca lets us set past dates)
key expired.key
openssl req -new -key expired.key -subj "/CN=localhost" -out expired.csr
mkdir -p .ca-db; : > .ca-db/index.txt; echo 1000 > .ca-db/serial
cat > .ca-db/ca.cnf <<CNF
[ ca ]
default_ca = test
[ test ]
database = .ca-db/index.txt
serial = .ca-db/serial
new_certs_dir = .ca-db
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[ any ]
commonName = supplied
[ ext ]
$ext_server
CNF
openssl ca -batch -config .ca-db/ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
  -out expired.pem -startdate 20200101000000Z -enddate 20200102000000Z -extensions ext \
  -notext 2>/dev/null
rm -rf .ca-db expired.csr ca.srl wrong-ca.srl
chmod 600 ./*.key client-bundle.pem

# sanity checks
openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
openssl verify -CAfile wrong-ca.pem wrong-client.pem >/dev/null
for v1 in client-v1 server-v1; do
  openssl x509 -in $v1.pem -noout -text | grep -q 'Version: 1 (0x0)' \
    || { echo "gen-certs: $v1.pem is not X.509 v1" >&2; exit 1; }
done
if openssl verify -CAfile ca.pem expired.pem >/dev/null 2>&1; then
  echo "gen-certs: expired.pem unexpectedly valid" >&2; exit 1
fi
echo "gen-certs: wrote $(ls | wc -l) files to $(pwd)"
