"""An independent client for a user's schema (tests/proto/plant.proto):
paho-mqtt plus code generated from the .proto with grpcio-tools at test time.

  schema_peer.py --proto FILE [--descriptor-set-out F] publish TOPIC   -> prints MessageToDict of what it sent
  schema_peer.py --proto FILE [--message Command] receive TOPIC       -> prints MessageToDict of what it got
  schema_peer.py --proto FILE descriptor-set OUT                      -> protoc --include_imports --descriptor_set_out

Connection flags: --host --port --cafile --cert --key. Output: one JSON
object on stdout; logs on stderr.
"""

import argparse
import importlib
import json
import os
import ssl
import sys
import tempfile
import threading

import paho.mqtt.client as mqtt
from google.protobuf import json_format


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def protoc(args_list):
    from grpc_tools import protoc as p

    include = os.path.join(os.path.dirname(p.__file__), "_proto")
    rc = p.main(["protoc", f"-I{include}", *args_list])
    if rc != 0:
        sys.exit(f"grpc_tools.protoc failed with {rc}")


def generate(proto):
    out = tempfile.mkdtemp(prefix="mqttkit-schema-py-")
    d = os.path.dirname(os.path.abspath(proto))
    protoc([f"-I{d}", f"--python_out={out}", os.path.abspath(proto)])
    sys.path.insert(0, out)
    name = os.path.splitext(os.path.basename(proto))[0] + "_pb2"
    return importlib.import_module(name)


def client(args):
    # `broker up` lets identity NAME (the certificate NAME.crt) use only client
    # ids that are NAME or start with NAME-.
    name = os.path.splitext(os.path.basename(args.cert))[0]
    client_id = f"{name}-py-{os.getpid()}"
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
    c.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return c


def sample(pb):
    m = pb.Metrics()
    m.site = "osaka"
    m.sequence = 42
    m.sampled_at.FromJsonString("2026-12-02T01:02:03.250Z")
    m.env.temperature_c = 21.5
    m.env.humidity_pct = 40.25
    m.tags.extend(["line-3", "north"])
    m.limits["max_c"] = 80.0
    m.limits["min_c"] = -5.5
    m.state = pb.Metrics.STATE_RUNNING
    m.ok_code = 7
    m.rssi_dbm = -61
    m.maintenance = True
    return m


def publish(args, pb, topic):
    m = sample(pb)
    c = client(args)
    done = threading.Event()
    c.on_publish = lambda *a: done.set()
    c.connect(args.host, args.port)
    c.loop_start()
    c.publish(topic, m.SerializeToString(), qos=1).wait_for_publish(30)
    done.wait(30)
    c.disconnect()
    c.loop_stop()
    print(json.dumps(json_format.MessageToDict(m)), flush=True)


def receive(args, pb, topic):
    got = {}
    done = threading.Event()

    def on_connect(c, userdata, flags, rc, props):
        c.subscribe(topic, qos=1)

    def on_subscribe(c, userdata, mid, rcs, props):
        log(f"subscribed to {topic}")

    def on_message(c, userdata, msg):
        m = getattr(pb, args.message)()
        m.ParseFromString(msg.payload)
        got["m"] = json_format.MessageToDict(m)
        done.set()

    c = client(args)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(args.host, args.port)
    c.loop_start()
    if not done.wait(args.timeout):
        sys.exit("no message within the timeout")
    c.disconnect()
    c.loop_stop()
    print(json.dumps(got["m"]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8883)
    ap.add_argument("--cafile")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--message", default="Metrics", help="the message type receive decodes")
    ap.add_argument("mode", choices=["publish", "receive", "descriptor-set", "sample"])
    ap.add_argument("arg")
    args = ap.parse_args()
    if args.mode == "descriptor-set":
        d = os.path.dirname(os.path.abspath(args.proto))
        protoc([f"-I{d}", "--include_imports", f"--descriptor_set_out={args.arg}", os.path.abspath(args.proto)])
        return
    pb = generate(args.proto)
    if args.mode == "publish":
        publish(args, pb, args.arg)
    elif args.mode == "receive":
        receive(args, pb, args.arg)
    else:
        print(json.dumps(json_format.MessageToDict(sample(pb))), flush=True)


if __name__ == "__main__":
    main()
