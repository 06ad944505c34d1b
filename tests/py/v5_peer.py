"""An independent MQTT 5 client (paho-mqtt, protocol=MQTTv5) for the
property round trips of tests/mqtt5.rs.

  v5_peer.py receive TOPIC   -> prints "ready" once subscribed, then one JSON
                                object for the first message: payload (text),
                                user_properties ([[k, v], ...]), message_expiry,
                                content_type
  v5_peer.py publish TOPIC   -> publishes "from paho" at QoS 1 with user
                                property origin=paho (twice: origin=paho,
                                origin=python) and message expiry 120 s

Connection flags: --host --port --cafile --cert --key. Logs on stderr.
"""

import argparse
import json
import ssl
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def client(args, client_id):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    c.tls_set(
        ca_certs=args.cafile,
        certfile=args.cert,
        keyfile=args.key,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    return c


def receive(args):
    c = client(args, args.client_id + "-receiver")
    got = threading.Event()

    def on_connect(c, userdata, flags, reason, props):
        c.subscribe(args.topic, qos=1)

    def on_subscribe(c, userdata, mid, reasons, props):
        if any(r.is_failure for r in reasons):
            sys.exit(f"subscription refused: {reasons}")
        print("ready", flush=True)

    def on_message(c, userdata, msg):
        p = msg.properties
        out = {
            "topic": msg.topic,
            "payload": msg.payload.decode("utf-8", "replace"),
            "user_properties": [list(kv) for kv in getattr(p, "UserProperty", [])],
            "message_expiry": getattr(p, "MessageExpiryInterval", None),
            "content_type": getattr(p, "ContentType", None),
        }
        print(json.dumps(out), flush=True)
        got.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.connect(args.host, args.port)
    c.loop_start()
    if not got.wait(30):
        sys.exit("nothing received within 30 s")
    c.disconnect()
    c.loop_stop()


def publish(args):
    c = client(args, args.client_id + "-publisher")
    c.connect(args.host, args.port)
    c.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("origin", "paho")
    props.UserProperty = ("origin", "python")
    props.MessageExpiryInterval = 120
    info = c.publish(args.topic, b"from paho", qos=1, properties=props)
    info.wait_for_publish(30)
    if info.rc != 0:
        sys.exit(f"publish failed: {info.rc}")
    log("published")
    c.disconnect()
    c.loop_stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    # mqttkit's broker binds client ids to the identity: NAME or NAME-*.
    ap.add_argument("--client-id", required=True)
    ap.add_argument("mode", choices=["receive", "publish"])
    ap.add_argument("topic")
    args = ap.parse_args()
    {"receive": receive, "publish": publish}[args.mode](args)


if __name__ == "__main__":
    main()
