"""A paho-mqtt + protobuf peer for mqttkit's interop tests.

Generates Python code from proto/*.proto with grpcio-tools into a temp dir
(the .proto is the public contract), then publishes or subscribes like a
device or a server would:

  flows_peer.py --proto-dir proto --host 127.0.0.1 --port P --cafile ca.crt \
      --cert X.crt --key X.key MODE [options]

Modes:
  sub-telemetry --count N      print each decoded Telemetry as one JSON line
  pub-telemetry --device-id ID --count N
  sub-command --device-id ID --count N
  pub-command --device-id ID --name NAME [--param k=v]...

Progress goes to stderr ("subscribed ..." once the SUBACK arrived); data to stdout.
"""

import argparse
import glob
import importlib
import json
import os
import ssl
import sys
import tempfile
import threading
import time
import uuid

import paho.mqtt.client as mqtt


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def generate(proto_dir):
    """Compiles the .proto files with grpcio-tools and imports mqttkit_pb2."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="mqttkit-py-")
    protos = sorted(glob.glob(os.path.join(proto_dir, "*.proto")))
    if not protos:
        sys.exit(f"no .proto files in {proto_dir}")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", *protos])
    if rc != 0:
        sys.exit(f"grpc_tools.protoc failed with {rc}")
    sys.path.insert(0, out)
    return importlib.import_module("mqttkit_pb2")


def identity(args):
    """The certificate's identity (mqttkit names it NAME.crt): `broker up` lets
    it use only client ids that are NAME or start with NAME-."""
    return os.path.splitext(os.path.basename(args.cert))[0]


def connect(args, client_id):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    c.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    # paho's default in-flight limit of 20 is plenty here; the queue must not drop.
    c.max_queued_messages_set(0)
    return c


def subscribe(args, pb, topic, decode, count):
    done = threading.Event()
    got = 0
    lock = threading.Lock()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log(f"connect failed: {reason_code}")
            os._exit(2)
        client.subscribe(topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            log(f"subscription to {topic} refused: {reason_codes}")
            os._exit(2)
        log(f"subscribed to {topic}")

    def on_message(client, userdata, msg):
        nonlocal got
        try:
            obj = decode(msg.payload)
        except Exception as e:  # noqa: BLE001 - report and go on, like mqttkit
            log(f"warning: {msg.topic}: {len(msg.payload)}-byte payload does not decode: {e}")
            return
        obj["topic"] = msg.topic
        with lock:
            print(json.dumps(obj), flush=True)
            got += 1
            if got >= count:
                done.set()

    c = connect(args, f"{identity(args)}-py-sub-{uuid.uuid4().hex[:8]}")
    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.connect(args.host, args.port, keepalive=30)
    c.loop_start()
    ok = done.wait(args.timeout)
    c.disconnect()
    c.loop_stop()
    if not ok:
        log(f"timed out with {got} of {count} messages")
        sys.exit(1)


def publish(args, topic, payloads):
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log(f"connect failed: {reason_code}")
            os._exit(2)
        connected.set()

    c = connect(args, f"{identity(args)}-py-pub-{uuid.uuid4().hex[:8]}")
    c.on_connect = on_connect
    c.connect(args.host, args.port, keepalive=30)
    c.loop_start()
    if not connected.wait(args.timeout):
        sys.exit("no CONNACK")
    infos = [c.publish(topic, p, qos=1) for p in payloads]
    deadline = time.monotonic() + args.timeout
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            log("a message was not acknowledged in time")
            sys.exit(1)
    c.disconnect()
    c.loop_stop()
    log(f"published {len(payloads)} to {topic}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("mode", choices=["sub-telemetry", "pub-telemetry", "sub-command", "pub-command"])
    ap.add_argument("--device-id")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--name")
    ap.add_argument("--param", action="append", default=[])
    args = ap.parse_args()

    pb = generate(args.proto_dir)
    Status = pb.Telemetry.Status

    if args.mode == "sub-telemetry":
        topic = f"devices/{args.device_id}/telemetry" if args.device_id else "devices/+/telemetry"

        def decode(payload):
            t = pb.Telemetry()
            t.ParseFromString(payload)
            return {
                "device_id": t.device_id,
                "seq": t.seq,
                "time_unix_nano": t.time_unix_nano,
                "temperature_c": t.temperature_c,
                "humidity_pct": t.humidity_pct,
                "pressure_hpa": t.pressure_hpa,
                "battery_v": t.battery_v,
                "rssi_dbm": t.rssi_dbm,
                "status": Status.Name(t.status),
            }

        subscribe(args, pb, topic, decode, args.count)
    elif args.mode == "pub-telemetry":
        payloads = []
        for i in range(args.count):
            t = pb.Telemetry(
                device_id=args.device_id,
                seq=i,
                time_unix_nano=time.time_ns(),
                temperature_c=20.0 + i / 100.0,
                humidity_pct=40.5,
                pressure_hpa=1013.25,
                battery_v=3.7,
                rssi_dbm=-60 - (i % 10),
                status=Status.STATUS_WARNING if i % 2 else Status.STATUS_OK,
            )
            payloads.append(t.SerializeToString())
        publish(args, f"devices/{args.device_id}/telemetry", payloads)
    elif args.mode == "sub-command":

        def decode(payload):
            c = pb.Command()
            c.ParseFromString(payload)
            return {
                "id": c.id,
                "device_id": c.device_id,
                "name": c.name,
                "params": dict(c.params),
                "time_unix_nano": c.time_unix_nano,
            }

        subscribe(args, pb, f"devices/{args.device_id}/commands", decode, args.count)
    elif args.mode == "pub-command":
        params = dict(p.split("=", 1) for p in args.param)
        cmd = pb.Command(
            id=str(uuid.uuid4()),
            device_id=args.device_id,
            name=args.name,
            params=params,
            time_unix_nano=time.time_ns(),
        )
        publish(args, f"devices/{args.device_id}/commands", [cmd.SerializeToString()])
        print(json.dumps({"id": cmd.id}), flush=True)


if __name__ == "__main__":
    main()
