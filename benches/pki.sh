#!/usr/bin/env bash
# `mqttkit pki init` (ECDSA P-256, process start included) against the seed
# README's six-command openssl recipe, in the same run, N times each.
# Usage: benches/pki.sh [N]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
cargo build --profile profiling --quiet
BIN=${CARGO_TARGET_DIR:-$PWD/target}/profiling/mqttkit
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

openssl_recipe() {
  local d=$1/certs; mkdir -p "$d"
  openssl req -new -x509 -days 365 -nodes -subj "/CN=MyRootCA" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -new -nodes -subj "/CN=localhost" -out "$d/broker.csr" -keyout "$d/broker.key" 2>/dev/null
  openssl x509 -req -in "$d/broker.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -out "$d/broker.crt" -days 365 2>/dev/null
  openssl req -new -nodes -subj "/CN=client" -out "$d/client.csr" -keyout "$d/client.key" 2>/dev/null
  openssl x509 -req -in "$d/client.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -out "$d/client.crt" -days 365 2>/dev/null
  openssl pkcs8 -topk8 -inform PEM -outform DER -nocrypt -in "$d/client.key" -out "$d/client_pkcs8.key"
}

ns() { date +%s%N; }

t0=$(ns)
for i in $(seq "$N"); do openssl_recipe "$work/o$i"; done
t1=$(ns)
for i in $(seq "$N"); do "$BIN" pki init --out "$work/m$i" --client client >/dev/null; done
t2=$(ns)
for i in $(seq "$N"); do "$BIN" pki init --out "$work/r$i" --client client --key-type rsa2048 >/dev/null; done
t3=$(ns)

openssl_ms=$(( (t1 - t0) / N / 1000000 ))
mqttkit_us=$(( (t2 - t1) / N / 1000 ))
rsa_ms=$(( (t3 - t2) / N / 1000000 ))
echo "runs: $N each ($(openssl version | cut -d' ' -f1-2), $(nproc) cores)"
echo "openssl recipe (6 commands, RSA 2048):     ${openssl_ms} ms per run"
echo "mqttkit pki init (ECDSA P-256):            $(( mqttkit_us / 1000 )).$(( (mqttkit_us % 1000) / 100 )) ms per run"
echo "mqttkit pki init --key-type rsa2048:       ${rsa_ms} ms per run"
awk -v o="$((t1 - t0))" -v m="$((t2 - t1))" 'BEGIN { printf "speed-up (ECDSA vs openssl recipe):        %.1fx\n", o / m }'
