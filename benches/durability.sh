#!/usr/bin/env bash
# What a broker crash takes of acknowledged QoS 1 messages, per
# `broker up --durability`, and what each setting costs the publisher.
#
#   benches/durability.sh [N] [RUNS]   (N messages per run, default 3000; RUNS per setting, default 3)
#
# Each run: a persistent subscriber session is created and left (so the
# broker must queue for it), `pub telemetry --count N --qos 1` publishes and
# exits 0 only when the broker acknowledged all N, mosquitto is SIGKILLed
# right after (or after DELAY s, default 0), `broker up` starts it again, and
# the subscriber resumes its session: lost = N - distinct seqs delivered.
# Everything runs on loopback in a temp dir and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}
RUNS=${2:-3}
DELAY=${DELAY:-0}

[ -n "${SKIP_BUILD:-}" ] || cargo build --profile profiling --quiet
BIN=${MQTTKIT_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/profiling/mqttkit}
WORK=$(mktemp -d)
cleanup() {
  (cd "$WORK" && "$BIN" broker down --out out >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

cd "$WORK"
"$BIN" pki init --out out >/dev/null 2>&1
PORT=$(free_port)

up() { "$BIN" broker up --out out --runtime native --bind 127.0.0.1 --port "$PORT" --durability "$1" --json 2>up.log |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }

# Creates the subscriber's persistent session (subscribed), then leaves it.
prime() {
  "$BIN" sub telemetry --out out --persistent --client-id durability-sub 2>prime.log >/dev/null &
  local p=$!
  for _ in $(seq 300); do grep -qs "subscribed" prime.log && break; sleep 0.05; done
  kill -INT "$p"
  wait "$p" || { echo "prime: sub exited with $?" >&2; tail -n 5 prime.log >&2; exit 1; }
}

run() {
  local mode=$1 pid t0 t1 got
  rm -rf out/mosquitto/data
  pid=$(up "$mode")
  prime
  t0=$(now)
  "$BIN" pub telemetry --out out --count "$N" --qos 1 >/dev/null 2>pub.log ||
    { echo "$mode: pub telemetry failed" >&2; tail -n 3 pub.log >&2; exit 1; }
  t1=$(now)
  sleep "$DELAY"
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
  up "$mode" >/dev/null
  # Whatever survived is delivered at once; 3 s without the count means lost.
  timeout 10 "$BIN" sub telemetry --out out --json --persistent --client-id durability-sub \
    --count "$N" 2>drain.log >drain.jsonl || true
  got=$(python3 -c 'import json,sys; print(len({json.loads(l)["seq"] for l in open(sys.argv[1]) if l.strip()}))' drain.jsonl)
  "$BIN" broker down --out out >/dev/null 2>&1
  printf '%-9s acked %d in %.2f s (%s msg/s), lost after SIGKILL: %d\n' "$mode" "$N" \
    "$(echo "$t1 - $t0" | bc)" "$(python3 -c "print(f'{$N/($t1-$t0):,.0f}')")" "$((N - got))"
}

echo "== $N QoS 1 messages to an offline persistent session, broker SIGKILLed ${DELAY}s after the last PUBACK; $(nproc) cores; mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')"
for mode in balanced strict; do
  for _ in $(seq "$RUNS"); do run "$mode"; done
done
