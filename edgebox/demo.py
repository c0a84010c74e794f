"""`edgebox demo`: a demo box with simulated cameras, so a newcomer sees the whole flow."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import click

from edgebox.box import Box
from edgebox.config import load_config, parse_listen
from edgebox.keys import certificate_fingerprint
from edgebox.provision import CONFIG_NAME, init_box

DEMO_SECRET = "demo-supervisor"  # noqa: S105 - the demo's published review secret
DEMO_USER, DEMO_PASSWORD = "demo", "demo-password"  # noqa: S105 - the demo's published login


def _free(host: str, port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
            return port
        except OSError:
            sock.bind((host, 0))
            return sock.getsockname()[1]


def run_demo(
    folder: Path,
    *,
    listen: str,
    cameras: int,
    clips: int,
    seconds: float,
    once: bool,
    with_central: bool = True,
    log=lambda line: click.echo(line),
) -> dict:
    """Create (or reuse) the demo box, start it, and let simulated cameras deliver clips."""
    from edgebox.camera import run_camera

    folder = Path(folder).resolve()
    if not (folder / CONFIG_NAME).exists():
        init_box(
            folder,
            box_id="demo-box",
            organisation="Demo Fire & Rescue",
            site="Engine 12",
            listen=listen,
            supervisor="supervisor",
            review_secret=DEMO_SECRET,
            demo=True,
        )
        log(f"created demo box in {folder}")
    upstream, central = _start_upstream(folder, log) if with_central else ({}, None)
    host, port = parse_listen(listen)
    box = Box(load_config(folder / CONFIG_NAME, environ=upstream)).start((host, _free(host, port)))
    if box.users.count() == 0:
        box.users.add(DEMO_USER, "supervisor", DEMO_PASSWORD, actor="demo")
    fingerprint = certificate_fingerprint(box.keys.tls_cert.read_bytes())
    log(f"box serving {box.url}  (certificate sha256 {fingerprint[:16]}...)")
    stop = threading.Event()
    threads = []
    for number in range(1, cameras + 1):
        state = folder / "cameras" / f"cam-{number}"
        code = None if (state / "camera.json").exists() else box.pairing.new_code("demo")["code"]
        thread = threading.Thread(
            target=run_camera,
            name=f"cam-{number}",
            args=(state,),
            kwargs={
                "box_url": box.url,
                "code": code,
                "cert_sha256": fingerprint,
                "clips": clips,
                "seconds": seconds,
                "pre_event": 30.0,
                "user_id": f"firefighter-{number}",
                "category": "incident",
                "chunk_size": 1 << 20,
                "stop": stop,
                "log": lambda line, n=number: log(f"[cam-{n}] {line}"),
            },
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    try:
        for thread in threads:
            thread.join()
        status = box.status()
        vault_dir = folder / "data" / "vault"
        log(f"{status['recordings']['n']} recordings stored encrypted in {vault_dir}")
        if central is not None:
            _wait_synced(box, folder / "central", log)
        log(
            f"open {box.url}/ and log in as {DEMO_USER} / {DEMO_PASSWORD} to see them (accept "
            f"the box's self-signed certificate); review secret for exports: {DEMO_SECRET}"
        )
        if not once:
            log("press Ctrl-C to stop")
            from edgebox.lowlevel.signals import wait_for_signal

            wait_for_signal(box.stop_event)
        return status
    finally:
        stop.set()
        box.stop()
        if central is not None:
            for part in central:
                part.stop()


def _start_upstream(folder: Path, log) -> tuple[dict, list | None]:
    """Start a local TLS broker and one central worker; ({} , None) when no broker can run."""
    from edgebox.central.worker import central_settings, start_workers
    from edgebox.lab_broker import LabBroker

    if LabBroker.available() is None:
        log(
            "no MQTT broker here (install mosquitto): the box runs offline, as in a vehicle "
            "out of coverage; recordings stay queued for central"
        )
        return {}, None
    broker = LabBroker(folder / "broker").start()
    box_cert, box_key = broker.client("demo-box")
    central_cert, central_key = broker.client("central")
    workers = start_workers(
        folder / "central",
        central_settings(
            broker.url, ca=str(broker.ca.ca_path), cert=str(central_cert), key=str(central_key)
        ),
        1,
    )
    log(
        f"broker {broker.url} (TLS, client certificates) and a central receiver storing in "
        f"{folder / 'central'}"
    )
    environ = {
        "EDGEBOX_UPSTREAM__BROKER": broker.url,
        "EDGEBOX_UPSTREAM__CA": str(broker.ca.ca_path),
        "EDGEBOX_UPSTREAM__CLIENT_CERT": str(box_cert),
        "EDGEBOX_UPSTREAM__CLIENT_KEY": str(box_key),
    }
    return environ, [*workers, broker]


def _wait_synced(box, store: Path, log, timeout: float = 120) -> None:
    """Report when central has confirmed every recording (or what is still on its way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backlog = box.status()["upstream"]["backlog"]
        if backlog["recordings"] == 0 and backlog["awaiting_seal"] == 0:
            box.checkpoint()
            box.uplink.flush_custody(timeout=10)
            count = box.status()["recordings"]["n"]
            log(
                f"central confirmed all {count} recordings (hash-checked) in {store}; "
                "the box sealed its copies"
            )
            return
        time.sleep(0.5)
    log(f"central has not confirmed everything yet: {box.status()['upstream']['backlog']}")
