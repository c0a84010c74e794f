"""The sync bench's helper processes: a raw paho QoS 1 publisher and a counting subscriber.

They give the limit the box is measured against: the same bytes, in the same chunks and window,
through the same TLS listener, with nothing else to do. Started by `bench/sync.py` as

    python bench/sync_roles.py _raw-pub   --url U --ca C --cert C --key K --bytes N [...]
    python bench/sync_roles.py _raw-count --url U --ca C --cert C --key K --bytes N

and report to it in JSON lines on stdout (`Proc.wait_event`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import KIB, cpu_self  # noqa: E402

CHUNK = 1024 * KIB  # upstream.chunk_size default
WINDOW = 16  # upstream.window default
RAW_TOPIC = "bench/raw"


def emit(**event) -> None:
    """One JSON line on stdout (how the helper processes report to the bench)."""
    print(json.dumps(event), flush=True)


def tls_client(
    url: str, client_id: str, ca: str, cert: str, key: str, inflight: int | None = None
) -> mqtt.Client:
    """A connected, started paho client (MQTT 5, TLS with a client certificate)."""
    host, port = url.removeprefix("mqtts://").rsplit(":", 1)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    if inflight is not None:
        client.max_inflight_messages_set(inflight)  # paho refuses this once connected
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: rc.is_failure or connected.set()
    client.connect(host, int(port), keepalive=30, clean_start=True)
    client.loop_start()
    if not connected.wait(15):
        client.loop_stop()
        raise SystemExit(f"{client_id}: no CONNACK from {url}")
    return client


def role_parser(role: str) -> argparse.ArgumentParser:
    """The options both roles take: the broker, TLS files and how many bytes."""
    parser = argparse.ArgumentParser(prog=f"sync_roles.py {role}")
    for name in ("--url", "--ca", "--cert", "--key"):
        parser.add_argument(name, required=True)
    parser.add_argument("--bytes", type=int, required=True)
    return parser


def role_publish(argv: list[str]) -> int:
    """Raw paho QoS 1 publisher: `--bytes` in `--chunk` messages, at most `--window` unacked."""
    parser = role_parser("_raw-pub")
    parser.add_argument("--chunk", type=int, default=CHUNK)
    parser.add_argument("--window", type=int, default=WINDOW)
    args = parser.parse_args(argv)
    offsets = list(range(0, args.bytes, args.chunk))
    client = tls_client(args.url, "bench-raw-pub", args.ca, args.cert, args.key, args.window)
    slots = threading.Semaphore(args.window)
    acked = Counter()
    done = threading.Event()

    def on_publish(client, userdata, mid, reason_code, properties):
        acked["n"] += 1
        slots.release()
        if acked["n"] == len(offsets):
            done.set()

    client.on_publish = on_publish
    block = random.Random(7).randbytes(args.chunk + 8 * 4099)
    emit(event="start", t=time.monotonic(), cpu=cpu_self())
    for n, offset in enumerate(offsets):
        slots.acquire()
        size = min(args.chunk, args.bytes - offset)
        start = (n % 8) * 4099
        info = client.publish(f"{RAW_TOPIC}/{offset}", block[start : start + size], qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise SystemExit(f"publish at {offset}: {mqtt.error_string(info.rc)}")
    done.wait(300)
    emit(event="acked", t=time.monotonic(), cpu=cpu_self(), messages=acked["n"])
    client.disconnect()
    client.loop_stop()
    return 0


def role_count(argv: list[str]) -> int:
    """Counting subscriber: QoS 1 on `bench/raw/#`, reports when `--bytes` have arrived."""
    args = role_parser("_raw-count").parse_args(argv)
    got = Counter()
    done = threading.Event()
    subscribed = threading.Event()
    stamps: dict = {}

    def on_message(client, userdata, message):
        if not got["messages"]:
            stamps["first"] = time.monotonic()
        got["messages"] += 1
        got["bytes"] += len(message.payload)
        if got["bytes"] >= args.bytes and not done.is_set():
            stamps["done"] = time.monotonic()
            done.set()

    client = tls_client(args.url, "bench-raw-count", args.ca, args.cert, args.key)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.subscribe(f"{RAW_TOPIC}/#", qos=1)
    if not subscribed.wait(15):
        raise SystemExit("no SUBACK")
    emit(event="ready", t=time.monotonic(), cpu=cpu_self())
    if not done.wait(300):
        emit(event="timeout", t=time.monotonic(), **got)
        return 1
    emit(event="done", t=stamps["done"], first=stamps["first"], cpu=cpu_self(), **got)
    client.disconnect()
    client.loop_stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the role named by the first argument (`_raw-pub` or `_raw-count`)."""
    argv = sys.argv[1:] if argv is None else argv
    roles = {"_raw-pub": role_publish, "_raw-count": role_count}
    if not argv or argv[0] not in roles:
        raise SystemExit(f"usage: sync_roles.py {{{','.join(roles)}}} OPTIONS")
    return roles[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
