#!/usr/bin/env bash
# Makes the mesh certificates of docker-compose-nowconnect-ha.yml in ./certs (or $1): a CA
# (ca.pem) and, per hub, a key and a certificate signed by it whose subject alternative name
# is the hub's compose host name (seed 002: modern TLS clients ignore the CN), valid for
# client and server use (each hub dials its peer and accepts it). Needs openssl.
set -euo pipefail

out="${1:-certs}"
days="${DAYS:-825}"
mkdir -p "$out"
cd "$out"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
	-subj "/CN=nowconnect mesh CA" -keyout ca.key -out ca.pem 2>/dev/null

for hub in a b; do
	name="nowconnect-cloud-$hub"
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-subj "/CN=$name" -keyout "hub-$hub.key" -out "hub-$hub.csr" 2>/dev/null
	openssl x509 -req -in "hub-$hub.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
		-days "$days" -out "hub-$hub.crt" \
		-extfile <(printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n' "$name") \
		2>/dev/null
	rm -f "hub-$hub.csr"
done
rm -f ca.srl
# The hubs run as uid 65532 and read these through a bind mount.
chmod 0644 ./*.pem ./*.crt ./*.key
chmod 0600 ca.key
echo "mesh-certs: $(pwd): ca.pem, hub-a.crt/key, hub-b.crt/key (ca.key signs more; keep it elsewhere)"
