#!/usr/bin/env bash
# Rows per second that `sub telemetry --sink` stores at QoS 1 into SQLite,
# PostgreSQL and InfluxDB, against a local mosquitto (release build with line tables).
#
#   benches/sink.sh [N]        (N messages per run, default 100000)
#   SCHEMA=1 benches/sink.sh [N]   the same with a user schema: tests/proto/plant.proto's
#                                  Metrics on plant/{site}/{device}/metrics, stored by
#                                  `sub telemetry --schema F --sink` into its own table
#
# Two runs per store:
#   drain: N messages queued for the sink's session while it is stopped, then
#          the time for `--count N` to store them all (the sink alone);
#   live:  `pub telemetry --rate $RATE` (default 20000) and the sink side by side;
#          "keeps up" when the last row lands within 1 s of the last publish.
# Everything runs on loopback in a temp dir and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
RATE=${RATE:-20000}   # live-run publisher rate, msg/s
STORES=${STORES:-sqlite postgres influx}   # e.g. STORES=sqlite for one store

[ -n "${SKIP_BUILD:-}" ] || cargo build --profile profiling --quiet
BIN=${CARGO_TARGET_DIR:-$PWD/target}/profiling/mqttkit
WORK=$(mktemp -d)
chmod 755 "$WORK" # postgres (another user) must reach its data dir
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  (cd "$WORK" && "$BIN" broker down --out out >/dev/null 2>&1) || true
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

INIT_ARGS=() UP_ARGS=() PUB_ARGS=()
if [ -n "${SCHEMA:-}" ]; then
  cp tests/proto/plant.proto tests/proto/plant.toml "$WORK/"
  export MQTTKIT_SCHEMA="$WORK/plant.toml" # pub, sub and sink stats all take it
  INIT_ARGS=(--client pump-a --client server) # naming clients replaces the default ones
  UP_ARGS=(--schema "$MQTTKIT_SCHEMA")
  PUB_ARGS=(--device-id pump-a --label site=osaka)
fi

cd "$WORK"
"$BIN" pki init --out out "${INIT_ARGS[@]}" >/dev/null 2>&1
MQTT_PORT=$(free_port)
"$BIN" broker up --out out --runtime native --bind 127.0.0.1 --port "$MQTT_PORT" "${UP_ARGS[@]}" >/dev/null 2>&1

# PostgreSQL (as the postgres user when root: it refuses to run as root).
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PG_PORT=$(free_port)
AS_PG=()
if [ "$(id -u)" -eq 0 ]; then AS_PG=(setpriv --reuid=postgres --regid=postgres --clear-groups --); fi
mkdir -p pg && { [ "$(id -u)" -ne 0 ] || chown postgres:postgres pg; }
"${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U postgres --no-sync >/dev/null
"${AS_PG[@]}" "$PGBIN/postgres" -D "$WORK/pg/data" -p "$PG_PORT" -k "$WORK/pg" \
  -c listen_addresses=127.0.0.1 >pg/log 2>&1 &
PIDS+=($!)
wait_port "$PG_PORT"
until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; do sleep 0.1; done

# InfluxDB 1.x.
INFLUX_PORT=$(free_port)
cat >influx.conf <<EOF
reporting-disabled = true
bind-address = "127.0.0.1:$(free_port)"
[meta]
  dir = "$WORK/influx/meta"
[data]
  dir = "$WORK/influx/data"
  wal-dir = "$WORK/influx/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$INFLUX_PORT"
  log-enabled = false
[monitor]
  store-enabled = false
EOF
influxd -config influx.conf >influx.log 2>&1 &
PIDS+=($!)
wait_port "$INFLUX_PORT"

# Creates the sink's persistent session (subscribed), then stops it.
prime() {
  rm -f prime.log # a stale copy would look like the new sink's
  "$BIN" sub telemetry --out out --sink "$1" 2>prime.log &
  local p=$!
  for _ in $(seq 300); do grep -qs "sink: subscribed" prime.log && break; sleep 0.05; done
  kill -TERM "$p"
  wait "$p" || { echo "prime $1: the sink exited with $?" >&2; tail -n 5 prime.log >&2; exit 1; }
}

rows_per_s() { python3 -c "import sys; n,t=float(sys.argv[1]),float(sys.argv[2]); print(f'{n/t:,.0f} rows/s ({t:.2f} s)')" "$1" "$2"; }

bench() {
  local name=$1 drain_url=$2 live_url=$3
  prime "$drain_url"
  "$BIN" pub telemetry --out out --count "$N" "${PUB_ARGS[@]}" >/dev/null 2>pub.log || { echo "$name: pub telemetry failed" >&2; tail -n 3 pub.log >&2; exit 1; }
  local t0 t1
  t0=$(now)
  "$BIN" sub telemetry --out out --sink "$drain_url" --count "$N" 2>>sink.log ||
    { echo "$name drain: the sink failed" >&2; tail -n 5 sink.log >&2; exit 1; }
  t1=$(now)
  printf '%-10s drain  %s\n' "$name" "$(rows_per_s "$N" "$(echo "$t1 - $t0" | bc)")"

  prime "$live_url"
  "$BIN" sub telemetry --out out --sink "$live_url" --count "$N" 2>>sink.log &
  local sink=$!
  sleep 0.3
  t0=$(now)
  "$BIN" pub telemetry --out out --count "$N" --rate "$RATE" "${PUB_ARGS[@]}" >/dev/null 2>pub.log || { echo "$name: pub telemetry failed" >&2; tail -n 3 pub.log >&2; exit 1; }
  local tp
  tp=$(now)
  wait "$sink" || { echo "$name live: the sink exited with $?" >&2; tail -n 5 sink.log >&2; exit 1; }
  t1=$(now)
  printf '%-10s live   %s, publishing at %s msg/s took %.2f s, last row %.2f s after the last publish\n' \
    "$name" "$(rows_per_s "$N" "$(echo "$t1 - $t0" | bc)")" "$RATE" "$(echo "$tp - $t0" | bc)" "$(echo "$t1 - $tp" | bc)"
}

echo "== $N QoS 1 messages per run${SCHEMA:+ (user schema: acme.plant.v1.Metrics)}; $(nproc) cores; mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')"
for store in $STORES; do
  case $store in
    sqlite) bench sqlite "sqlite:$WORK/drain.db" "sqlite:$WORK/live.db" ;;
    postgres)
      psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 'CREATE DATABASE drain' -c 'CREATE DATABASE live' postgres
      bench postgres "postgres://postgres@127.0.0.1:$PG_PORT/drain" "postgres://postgres@127.0.0.1:$PG_PORT/live" ;;
    influx) bench influx "influx://127.0.0.1:$INFLUX_PORT/drain" "influx://127.0.0.1:$INFLUX_PORT/live" ;;
    *) echo "STORES: unknown store $store (sqlite, postgres, influx)" >&2; exit 2 ;;
  esac
done
