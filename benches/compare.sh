#!/usr/bin/env bash
# Throughput comparison through ONE mosquitto with mutual TLS on loopback, all
# in the same run:
#   1. mosquitto_pub -l  -> mosquitto_sub          (the C clients), QoS 0 and 1
#   2. mqttkit pub telemetry -> mqttkit sub telemetry,               QoS 0 and 1,
#      over MQTT 5 (the default) and again with -V 311 (the ratio 5 / 3.1.1)
#   2b. mqttkit pub -t -l -> mqttkit sub -t (raw lines, the same text as 1), QoS 0 and 1
#   2c. the built-in `sub telemetry --json`, QoS 0 and 1, and the same telemetry as 2 through a user schema (--schema: proto/mqttkit.proto
#       loaded at run time, decoded by reflection), sub --json, QoS 0 and 1
#   3. mqttkit bench: 1 device, 100 devices, and 1,000 devices with per-device
#      certificates (connect rate, latency, memory per connection)
# For each pub -> sub pair it counts what arrived at the subscriber and the
# delivered rate (messages / time from the publisher's start to the last
# arrival), then prints the ratios.
#
# Usage: benches/compare.sh            (N=200000 messages per pub/sub run)
#        N=50000 SKIP_BUILD=1 benches/compare.sh
#        ONLY="v5 schema" benches/compare.sh   (parts: c v5 raw json schema bench)
#        REPEAT=5 benches/compare.sh           (median of 5 rounds; default 3)
# Needs: mosquitto, mosquitto-clients, python3. Stops everything it starts.
set -euo pipefail

N=${N:-200000}
SUB_TIMEOUT=${SUB_TIMEOUT:-120}   # seconds a subscriber may wait in total
IDLE=${IDLE:-3}                   # seconds without new arrivals = done
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for cmd in mosquitto mosquitto_pub mosquitto_sub python3; do
  command -v "$cmd" >/dev/null || { echo "error: $cmd not found (apt-get install mosquitto mosquitto-clients python3)" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
  echo "== cargo build --profile profiling" >&2
  (cd "$ROOT" && cargo build --profile profiling --quiet)
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/profiling/mqttkit"

WORK=$(mktemp -d /tmp/mqttkit-compare.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  (cd "$WORK" && "$BIN" broker down --out out >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
cd "$WORK"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" pki init --out out >/dev/null
"$BIN" broker up --out out --runtime native --bind 127.0.0.1 --port "$PORT" --compose-file compose.yaml >/dev/null
C=out/certs
TLS=(-h 127.0.0.1 -p "$PORT" --cafile "$C/ca.crt")
BROKER_PID=$(tr -dc 0-9 <out/mosquitto/mosquitto.pid)
# The broker's CPU time (user + system) in seconds: where the single-threaded
# broker is saturated, its CPU per message bounds every client's rate.
broker_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$BROKER_PID/stat"; }

now() { date +%s.%N; }
lines() { [ -f "$1" ] && wc -l <"$1" || echo 0; }

# wait_arrivals FILE T0 SUB_PID: until the subscriber exits (count reached or
# its time limit) or nothing new arrived for IDLE s; prints "count seconds"
# where seconds runs from T0 to the last growth of FILE.
wait_arrivals() {
  local file=$1 t0=$2 pid=$3 last=-1 t_last idle_since
  t_last=$(now); idle_since=$(now)
  while kill -0 "$pid" 2>/dev/null; do
    local n; n=$(lines "$file")
    if [ "$n" != "$last" ]; then last=$n; t_last=$(now); idle_since=$t_last
    elif python3 -c "import sys; sys.exit(0 if $(now) - $idle_since > $IDLE else 1)"; then break; fi
    sleep 0.05
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local n; n=$(lines "$file")
  # An exited subscriber wrote its last line just now at the latest.
  [ "$n" != "$last" ] && t_last=$(now)
  echo "$n $(python3 -c "print(f'{$t_last - $t0:.3f}')")"
}

# Text lines about the size of one encoded Telemetry message (~60 bytes).
python3 - "$N" >lines.txt <<'EOF'
import sys
for i in range(int(sys.argv[1])):
    print(f"device-001 seq={i:09d} t=21.53 h=45.20 p=1013.25 b=4.101 r=-63 ok")
EOF

declare -A RATE COUNT SECS BUSY
# broker_note KEY CPU0 CPU1 SECS COUNT: broker CPU per delivered message and
# how busy it was (CPU seconds / wall seconds) during one run.
broker_note() {
  read -r US BUSY[$1] < <(python3 -c "c=$3-$2; print(f'{c/$5*1e6:.1f}' if $5 else 'n/a', f'{c/$4*100:.0f}%' if $4 > 0 else 'n/a')")
  BROKER_US[$1]=$US
}
declare -A BROKER_US
run_mosquitto() {
  local q=$1; local out="mosq_q$q.txt"
  mosquitto_sub "${TLS[@]}" -I server- --cert "$C/server.crt" --key "$C/server.key" \
    -t 'devices/+/telemetry' -q "$q" -C "$N" -W "$SUB_TIMEOUT" >"$out" 2>mosq_sub_q$q.err &
  local sub=$!; PIDS+=("$sub")
  sleep 1  # subscribed before the first message
  local t0 c0; t0=$(now); c0=$(broker_cpu)
  # -I NAME-: `broker up` binds client ids to the identity (NAME or NAME-*).
  mosquitto_pub "${TLS[@]}" -I device-001- --cert "$C/device-001.crt" --key "$C/device-001.key" \
    -t devices/device-001/telemetry -q "$q" -l <lines.txt 2>mosq_pub_q$q.err || echo "  (mosquitto_pub exited $?)" >&2
  read -r n secs < <(wait_arrivals "$out" "$t0" "$sub")
  COUNT[mosq$q]=$n; SECS[mosq$q]=$secs
  RATE[mosq$q]=$(python3 -c "print(round($n / $secs) if $secs > 0 else 0)")
  broker_note "mosq$q" "$c0" "$(broker_cpu)" "$secs" "$n"
  echo "mosquitto_pub -l -> mosquitto_sub  QoS $q: $n of $N arrived in $secs s: ${RATE[mosq$q]:-} msg/s (broker ${BROKER_US[mosq$q]:-} us CPU per message, busy ${BUSY[mosq$q]:-})" >&2
}

# run_mqttkit QOS [PROTOCOL] [json]: MQTT 5 (the default) or 311, keyed
# mqttkitQ / mqttkit311_Q; with json, `sub telemetry --json` (mqttkitjsonQ).
run_mqttkit() {
  local q=$1; local v=${2:-5}; local key="mqttkit$q"; local fmt=()
  [ "$v" = 311 ] && key="mqttkit311_$q"
  [ "${3:-}" = json ] && { key="mqttkitjson$q"; fmt=(--json); }
  local out="${key}.txt"
  "$BIN" sub telemetry --out out -V "$v" --qos "$q" --count "$N" --reconnect-timeout 5 "${fmt[@]}" >"$out" 2>${key}_sub.err &
  local sub=$!; PIDS+=("$sub")
  sleep 1
  local t0 c0; t0=$(now); c0=$(broker_cpu)
  "$BIN" pub telemetry --out out -V "$v" --qos "$q" --count "$N" 2>${key}_pub.err || echo "  (mqttkit pub exited $?)" >&2
  PUBRATE[$key]=$(python3 -c "print(round($N / ($(now) - $t0)))")
  read -r n secs < <(wait_arrivals "$out" "$t0" "$sub")
  COUNT[$key]=$n; SECS[$key]=$secs
  RATE[$key]=$(python3 -c "print(round($n / $secs) if $secs > 0 else 0)")
  broker_note "$key" "$c0" "$(broker_cpu)" "$secs" "$n"
  # Exactly once: every seq 0..N-1 once.
  local check; check=$(python3 - "$out" "$N" <<'EOF'
import re, sys
# One text line per message, like mosquitto_sub's: "device-001 seq=N ...",
# or one JSON object ("seq":N).
seqs = [int(m.group(1)) for m in map(re.compile(r'(?: seq=|"seq":)(\d+)').search, open(sys.argv[1])) if m]
n = int(sys.argv[2])
distinct = len(set(seqs))
missing = n - len(set(s for s in seqs if s < n))
print(f"distinct {distinct}, duplicates {len(seqs) - distinct}, missing {missing}")
EOF
)
  echo "mqttkit pub -> mqttkit sub (-V $v) QoS $q: $n of $N arrived in $secs s: ${RATE[$key]:-} msg/s ($check; broker ${BROKER_US[$key]:-} us CPU per message, busy ${BUSY[$key]:-})" >&2
  CHECK[$key]=$check
}
declare -A CHECK

# mqttkit's own Telemetry as if it were a user's schema: compiled at run time
# and decoded by reflection, printed as JSON.
cat >schema.toml <<EOF
proto = ["$ROOT/proto/mqttkit.proto"]
[[topic]]
filter = "devices/{device}/telemetry"
message = "mqttkit.v1.Telemetry"
role = "telemetry"
seq = "seq"
time = "time_unix_nano"
time_unit = "ns"
EOF
run_mqttkit_schema() {
  local q=$1; local out="schema_q$q.txt"
  "$BIN" sub telemetry --out out --schema schema.toml --json -q "$q" --count "$N" --reconnect-timeout 5 >"$out" 2>schema_sub_q$q.err &
  local sub=$!; PIDS+=("$sub")
  sleep 1
  local t0 t1 c0; t0=$(now); c0=$(broker_cpu)
  "$BIN" pub telemetry --out out --schema schema.toml --device-id device-001 -q "$q" --count "$N" 2>schema_pub_q$q.err || echo "  (mqttkit pub --schema exited $?)" >&2
  t1=$(now)
  PUBRATE[schema$q]=$(python3 -c "print(round($N / ($t1 - $t0)))")
  read -r n secs < <(wait_arrivals "$out" "$t0" "$sub")
  COUNT[schema$q]=$n; SECS[schema$q]=$secs
  RATE[schema$q]=$(python3 -c "print(round($n / $secs) if $secs > 0 else 0)")
  broker_note "schema$q" "$c0" "$(broker_cpu)" "$secs" "$n"
  echo "mqttkit pub/sub telemetry --schema QoS $q: $n of $N arrived in $secs s: ${RATE[schema$q]:-} msg/s (publisher alone ${PUBRATE[schema$q]:-} msg/s; broker ${BROKER_US[schema$q]:-} us CPU per message)" >&2
}
declare -A PUBRATE

# The same text lines as the C clients, through mqttkit's raw pub -l / sub -t.
run_mqttkit_raw() {
  local q=$1; local out="raw_q$q.txt"
  "$BIN" sub --out out -t 'devices/+/telemetry' -q "$q" -C "$N" --reconnect-timeout 5 >"$out" 2>raw_sub_q$q.err &
  local sub=$!; PIDS+=("$sub")
  sleep 1
  local t0 c0; t0=$(now); c0=$(broker_cpu)
  "$BIN" pub --out out -t devices/device-001/telemetry -q "$q" -l <lines.txt 2>raw_pub_q$q.err || echo "  (mqttkit pub -l exited $?)" >&2
  read -r n secs < <(wait_arrivals "$out" "$t0" "$sub")
  COUNT[raw$q]=$n; SECS[raw$q]=$secs
  RATE[raw$q]=$(python3 -c "print(round($n / $secs) if $secs > 0 else 0)")
  broker_note "raw$q" "$c0" "$(broker_cpu)" "$secs" "$n"
  echo "mqttkit pub -l -> mqttkit sub -t   QoS $q: $n of $N arrived in $secs s: ${RATE[raw$q]:-} msg/s (broker ${BROKER_US[raw$q]:-} us CPU per message, busy ${BUSY[raw$q]:-})" >&2
}

echo "== mosquitto $(mosquitto -h 2>&1 | head -1 | awk '{print $3}'), mTLS on 127.0.0.1:$PORT, $N messages per run" >&2
# ONLY="v5 schema" runs only those parts (c v5 raw json schema bench); the
# summary then shows n/a for the rest.
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
# REPEAT=K runs each mqttkit pair K times, interleaved (a round is every
# pair once), and reports the median delivered and publisher rates: one
# QoS 0 run of a loaded 2-core machine is too noisy for a ratio.
REPEAT=${REPEAT:-3}
declare -A RUNS PUBRUNS
# keep KEY: records this round's rates of KEY.
keep() { RUNS[$1]="${RUNS[$1]:-} ${RATE[$1]:-0}"; PUBRUNS[$1]="${PUBRUNS[$1]:-} ${PUBRATE[$1]:-0}"; }
median() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(round(statistics.median(v)) if v else 0)" $1; }
if want c; then run_mosquitto 0; run_mosquitto 1; fi
for round in $(seq "$REPEAT"); do
  echo "== round $round of $REPEAT" >&2
  if want v5; then
    run_mqttkit 0; keep mqttkit0; run_mqttkit 0 311; keep mqttkit311_0
    run_mqttkit 1; keep mqttkit1; run_mqttkit 1 311; keep mqttkit311_1
  fi
  if want raw; then run_mqttkit_raw 0; keep raw0; run_mqttkit_raw 1; keep raw1; fi
  if want json || want schema; then
    run_mqttkit 0 5 json; keep mqttkitjson0; run_mqttkit 1 5 json; keep mqttkitjson1
  fi
  if want schema; then run_mqttkit_schema 0; keep schema0; run_mqttkit_schema 1; keep schema1; fi
done
for k in "${!RUNS[@]}"; do
  RATE[$k]=$(median "${RUNS[$k]}"); PUBRATE[$k]=$(median "${PUBRUNS[$k]}")
  echo "median of $REPEAT: $k delivered ${RATE[$k]} msg/s (runs:${RUNS[$k]}), publisher ${PUBRATE[$k]} msg/s" >&2
done

bench() {
  local name=$1; shift
  echo "== mqttkit bench $*" >&2
  "$BIN" bench --out out "$@" --json >"bench_$name.json" 2>"bench_$name.err" || echo "  (bench exited $?; see below)" >&2
  python3 - "bench_$name.json" <<'EOF' >&2
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print("  no report:", e); sys.exit(0)
c, l, m = r["connect"], r["latency"], r["memory"]
print(f"  {r['devices']} devices ({r['identities']}), {r['subscribers']} sub, QoS {r['qos']}: "
      f"connected {c['connected']}/{r['devices']} ({c['handshakes_per_s']} handshakes/s, p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms)")
print(f"  published {r['published']}, delivered {r['delivered']}/{r['expected']}, lost {r['lost']}, dup {r['duplicated']}: "
      f"{r['delivered_per_s']} msg/s delivered")
print(f"  latency p50 {l['p50_ms']} ms, p95 {l['p95_ms']} ms, p99 {l['p99_ms']} ms, max {l['max_ms']} ms")
print(f"  peak RSS {m['peak_rss_kib']/1024:.1f} MiB, {m['per_connection_kib']} KiB per connection; problems: {r['problems'] or 'none'}")
EOF
  cat "bench_$name.err" >&2 || true
}
if want bench; then
  bench q0_1dev --devices 1 --subscribers 1 --qos 0 --count "$N"
  bench q1_1dev --devices 1 --subscribers 1 --qos 1 --count "$N"
  bench q1_100dev --devices 100 --subscribers 1 --qos 1 --count $((N / 100))
  bench q1_1000dev --devices 1000 --subscribers 1 --qos 1 --rate 10 --duration 20
fi

ratio() { python3 -c "a='$1'; b='$2'; print(f'{float(a)/float(b):.2f}x' if a and b and float(b) else 'n/a')"; }
cat <<EOF

== summary (delivered msg/s through one mosquitto, mTLS, loopback)
mosquitto_pub -> mosquitto_sub  QoS 0: ${RATE[mosq0]:-} msg/s (${COUNT[mosq0]:-}/$N)
mosquitto_pub -> mosquitto_sub  QoS 1: ${RATE[mosq1]:-} msg/s (${COUNT[mosq1]:-}/$N)
mqttkit pub -> mqttkit sub      QoS 0: ${RATE[mqttkit0]:-} msg/s (${COUNT[mqttkit0]:-}/$N; ${CHECK[mqttkit0]:-})
mqttkit pub -> mqttkit sub      QoS 1: ${RATE[mqttkit1]:-} msg/s (${COUNT[mqttkit1]:-}/$N; ${CHECK[mqttkit1]:-})
mqttkit -V 311                  QoS 0: ${RATE[mqttkit311_0]:-} msg/s (${COUNT[mqttkit311_0]:-}/$N; ${CHECK[mqttkit311_0]:-})
mqttkit -V 311                  QoS 1: ${RATE[mqttkit311_1]:-} msg/s (${COUNT[mqttkit311_1]:-}/$N; ${CHECK[mqttkit311_1]:-})
ratio MQTT 5 / MQTT 3.1.1       QoS 0: $(ratio "${RATE[mqttkit0]:-}" "${RATE[mqttkit311_0]:-}"), publisher $(ratio "${PUBRATE[mqttkit0]:-}" "${PUBRATE[mqttkit311_0]:-}")   (target >= 0.90x)
ratio MQTT 5 / MQTT 3.1.1       QoS 1: $(ratio "${RATE[mqttkit1]:-}" "${RATE[mqttkit311_1]:-}"), publisher $(ratio "${PUBRATE[mqttkit1]:-}" "${PUBRATE[mqttkit311_1]:-}")   (target >= 0.90x)
mqttkit pub -l -> sub -t        QoS 0: ${RATE[raw0]:-} msg/s (${COUNT[raw0]:-}/$N)
mqttkit pub -l -> sub -t        QoS 1: ${RATE[raw1]:-} msg/s (${COUNT[raw1]:-}/$N)
mqttkit telemetry --schema      QoS 0: ${RATE[schema0]:-} msg/s (${COUNT[schema0]:-}/$N), publisher alone ${PUBRATE[schema0]:-} msg/s
mqttkit telemetry --schema      QoS 1: ${RATE[schema1]:-} msg/s (${COUNT[schema1]:-}/$N), publisher alone ${PUBRATE[schema1]:-} msg/s
mqttkit sub telemetry --json    QoS 0: ${RATE[mqttkitjson0]:-} msg/s (${COUNT[mqttkitjson0]:-}/$N; ${CHECK[mqttkitjson0]:-})
mqttkit sub telemetry --json    QoS 1: ${RATE[mqttkitjson1]:-} msg/s (${COUNT[mqttkitjson1]:-}/$N; ${CHECK[mqttkitjson1]:-})
ratio user schema / built-in    QoS 0: delivered $(ratio "${RATE[schema0]:-}" "${RATE[mqttkitjson0]:-}") of --json, $(ratio "${RATE[schema0]:-}" "${RATE[mqttkit0]:-}") of text; publisher $(ratio "${PUBRATE[schema0]:-}" "${PUBRATE[mqttkit0]:-}")   (target >= 0.80x)
ratio user schema / built-in    QoS 1: delivered $(ratio "${RATE[schema1]:-}" "${RATE[mqttkitjson1]:-}") of --json, $(ratio "${RATE[schema1]:-}" "${RATE[mqttkit1]:-}") of text; publisher $(ratio "${PUBRATE[schema1]:-}" "${PUBRATE[mqttkit1]:-}")   (target >= 0.80x)
ratio raw lines mqttkit / C     QoS 0: $(ratio "${RATE[raw0]:-}" "${RATE[mosq0]:-}")   (target >= 1.0x)
ratio raw lines mqttkit / C     QoS 1: $(ratio "${RATE[raw1]:-}" "${RATE[mosq1]:-}")   (target >= 1.0x)
ratio mqttkit / mosquitto       QoS 0: $(ratio "${RATE[mqttkit0]:-}" "${RATE[mosq0]:-}")   (target >= 1.2x)
ratio mqttkit / mosquitto       QoS 1: $(ratio "${RATE[mqttkit1]:-}" "${RATE[mosq1]:-}")
ratio mqttkit QoS 1 / QoS 0          : $(ratio "${RATE[mqttkit1]:-}" "${RATE[mqttkit0]:-}")   (target >= 0.50x)
ratio mqttkit QoS 1 / C clients QoS 0: $(ratio "${RATE[mqttkit1]:-}" "${RATE[mosq0]:-}")
broker CPU per message, mqttkit pair : QoS 0 ${BROKER_US[mqttkit0]:-} us (busy ${BUSY[mqttkit0]:-}), QoS 1 ${BROKER_US[mqttkit1]:-} us (busy ${BUSY[mqttkit1]:-})
  -> with the broker saturated, QoS 1 can reach at most $(ratio "${BROKER_US[mqttkit0]:-}" "${BROKER_US[mqttkit1]:-}") of the QoS 0 rate
EOF
for f in bench_*.json; do
  python3 - "$f" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(0)
c, l, m = r["connect"], r["latency"], r["memory"]
print(f"mqttkit bench {r['devices']:>4} dev QoS {r['qos']}: {r['delivered_per_s']:>9} msg/s delivered, lost {r['lost']}, dup {r['duplicated']}, "
      f"latency p50/p99 {l['p50_ms']}/{l['p99_ms']} ms, connect {c['handshakes_per_s']}/s, {m['per_connection_kib']} KiB/conn, peak {m['peak_rss_kib']/1024:.0f} MiB")
EOF
done
