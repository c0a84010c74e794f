"""`edgebox central`: run the upstream receiver and inspect what it holds."""

from __future__ import annotations

import threading
from pathlib import Path

import click

from edgebox.cli import emit, handle_errors, json_option, main

store_option = click.option(
    "--store",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Central's store folder (files and index).",
)


@main.group()
def central():
    """The central receiver: takes every box's recordings and custody, confirms them."""


@central.command("run")
@click.option("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT.")
@store_option
@click.option("--workers", default=2, show_default=True, help="Workers in the shared subscription.")
@click.option(
    "--ca", type=click.Path(dir_okay=False), help="CA bundle for the broker's certificate."
)
@click.option("--cert", type=click.Path(dir_okay=False), help="Client certificate (mutual TLS).")
@click.option("--key", type=click.Path(dir_okay=False), help="Client certificate's key.")
@click.option("--username", default="", help="Broker user name.")
@click.option("--password-file", type=click.Path(dir_okay=False), help="File holding the password.")
@handle_errors
def run_central(broker, store, workers, ca, cert, key, username, password_file):
    """Receive from every box until stopped (SIGTERM or Ctrl-C)."""
    from edgebox.central.worker import central_settings, run_until, start_workers
    from edgebox.cli.running import wait_for_signal

    password = Path(password_file).read_text().strip() if password_file else ""
    settings = central_settings(
        broker, ca=ca, cert=cert, key=key, username=username, password=password
    )
    started = start_workers(store, settings, workers)
    click.echo(f"central: {workers} worker(s) on {broker}, store {store}", err=True)
    stop = threading.Event()
    threading.Thread(target=run_until, args=(stop, started), daemon=True).start()
    try:
        wait_for_signal(stop)
    finally:
        stop.set()
        for worker in started:
            worker.stop()


@central.command("list")
@store_option
@json_option
@handle_errors
def list_central(store, as_json):
    """What central holds: box, recording id, evidence and stored-bytes SHA-256, completeness."""
    from edgebox.central.index import Index

    index = Index(store)
    try:
        rows = [
            {
                "box_id": r["box_id"],
                "recording_id": r["recording_id"],
                "evidence_sha256": r["evidence_sha256"],
                "stored_sha256": r["stored_sha256"],
                "size": r["size"],
                "received_at": r["received_at"],
                "complete": True,
            }
            for r in index.query("SELECT * FROM recordings ORDER BY received_at")
        ]
    finally:
        index.close()

    for folder in (
        sorted((store / "transfers").glob("*/*")) if (store / "transfers").exists() else []
    ):
        rows.append(
            {
                "box_id": folder.parent.name,
                "recording_id": folder.name.rsplit(".", 1)[0],
                "evidence_sha256": None,
                "stored_sha256": None,
                "size": None,
                "received_at": None,
                "complete": False,
            }
        )

    def text(rows):
        for r in rows:
            state = "complete" if r["complete"] else "partial"
            click.echo(
                f"{r['box_id']:<16} {r['recording_id']}  {state:<8} {r['evidence_sha256'] or ''}"
            )

    emit(rows, as_json, text)
