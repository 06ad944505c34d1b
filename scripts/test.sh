#!/usr/bin/env bash
# The one test command (README "Tests"): installs what the tests need on a
# fresh Debian machine, then runs formatting, lints and the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_pkgs=()
for pair in mosquitto:mosquitto mosquitto_pub:mosquitto-clients openssl:openssl \
            javac:default-jdk-headless script:bsdutils strace:strace man:man-db groff:groff-base \
            dockerd:docker.io docker-compose:docker-compose; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
# Sink tests: a real InfluxDB 1.x and PostgreSQL (server binaries live off PATH).
command -v influxd >/dev/null 2>&1 || need_pkgs+=(influxdb)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need_pkgs+=(postgresql)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
# tests/docker.rs starts a dockerd of its own when none answers (and skips,
# saying why, where dockerd cannot run), so docker.io needs no service here.
# The distribution's service must not hold port 1883/8883 during tests.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop mosquitto >/dev/null 2>&1 || true; fi

# Python peers (paho-mqtt + protobuf, moto) live in an ignored venv.
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import paho.mqtt, google.protobuf, grpc_tools, moto.server, boto3, cryptography' 2>/dev/null; then
  echo "== installing Python test peers into $VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/py/requirements.txt
fi
export MQTTKIT_TEST_PYTHON="$PWD/$VENV/bin/python"

# A one-shot build gains nothing from incremental caches; they only cost disk
# (CI once ran out of space mid-build).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== disk before build: $(df -h . | awk 'NR==2 {print $4 " free of " $2}')" >&2

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
