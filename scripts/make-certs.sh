#!/usr/bin/env bash
# make-certs.sh: the certificates of one federation, made with the openssl tool.
#
#   scripts/make-certs.sh DIR [PARTNER ...]
#
# Writes into DIR (created if needed):
#   ca.pem, ca.key              the federation's CA (kept if DIR already has one, so partners can be
#                               added later with the same CA)
#   server.pem, server.key      the coordinator's certificate: SAN localhost, 127.0.0.1, ::1 and
#                               whatever FEDPROF_SERVER_SAN adds (e.g. "DNS:coord.example,IP:10.0.0.5")
#   PARTNER.pem, PARTNER.key    one client certificate per partner, CN = PARTNER (the identity the
#                               coordinator sees), for client authentication only
# Existing certificates are kept (delete them to remake them). Keys are ECDSA P-256, mode 0600.
# Partner names: letters, digits, '.', '_' and '-' (they become a certificate subject).
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -ge 1 ] && exit 0 || exit 2
fi
command -v openssl >/dev/null 2>&1 || { echo "make-certs: the openssl tool is not installed" >&2; exit 1; }

dir=$1
shift
for name in "$@"; do
    if ! [[ $name =~ ^[A-Za-z0-9._-]{1,64}$ ]] || [ "$name" = "ca" ] || [ "$name" = "server" ]; then
        echo "make-certs: bad partner name '$name' (letters, digits, . _ -; not ca or server)" >&2
        exit 2
    fi
done
mkdir -p "$dir"
umask 077
days=825
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

# sign NAME SUBJECT EXTFILE: NAME.key (new) + NAME.pem signed by the CA.
sign() {
    local name=$1 subj=$2 ext=$3
    newkey "$dir/$name.key"
    openssl req -new -key "$dir/$name.key" -subj "$subj" -out "$tmp/$name.csr" 2>/dev/null
    openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
        -days "$days" -sha256 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
    chmod 644 "$dir/$name.pem"
}

if [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ]; then
    echo "kept    $dir/ca.pem (CA)"
else
    newkey "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 \
        -subj "/O=fedprof/CN=fedprof federation CA $(openssl rand -hex 4)" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$dir/ca.pem" 2>/dev/null
    chmod 644 "$dir/ca.pem"
    echo "wrote   $dir/ca.pem $dir/ca.key (CA)"
fi

if [ -s "$dir/server.pem" ] && [ -s "$dir/server.key" ]; then
    echo "kept    $dir/server.pem (server)"
else
    san="DNS:localhost,IP:127.0.0.1,IP:::1${FEDPROF_SERVER_SAN:+,$FEDPROF_SERVER_SAN}"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
        "$san" >"$tmp/server.ext"
    sign server "/O=fedprof/CN=localhost" "$tmp/server.ext"
    echo "wrote   $dir/server.pem $dir/server.key (server, $san)"
fi

printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$tmp/client.ext"
for name in "$@"; do
    if [ -s "$dir/$name.pem" ] && [ -s "$dir/$name.key" ]; then
        echo "kept    $dir/$name.pem (partner $name)"
        continue
    fi
    sign "$name" "/O=fedprof/CN=$name" "$tmp/client.ext"
    echo "wrote   $dir/$name.pem $dir/$name.key (partner, CN=$name)"
done
