"""`edgebox central`: run the upstream receiver and inspect what it holds."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import click

from edgebox.cli import emit, handle_errors, json_option, main

store_url_option = click.option(
    "--store",
    required=True,
    help="Where complete files go: a folder (also the work folder by default) or "
    "s3://BUCKET/PREFIX (credentials and endpoint from AWS_* variables or ~/.aws, never here).",
)
work_option = click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    help="Local folder for transfers under way, replica sets being checked and a SQLite "
    "index (default: the --store folder; needed with s3://). Nodes that share the work "
    "share this folder.",
)
index_option = click.option(
    "--index",
    "index_spec",
    default="sqlite",
    show_default=True,
    help="sqlite (central.db in the work folder) or postgresql://USER@HOST:PORT/DB "
    "(password from PGPASSWORD or ~/.pgpass).",
)


def work_folder(store: str, work: Path | None, index_spec: str) -> Path:
    """The work folder for `--store`/`--work`/`--index`: refuses an s3:// store without
    --work and an index URL that carries a password."""
    from edgebox.central.index_pg import check_url

    if index_spec != "sqlite":
        check_url(index_spec)
    if work is not None:
        return work
    if "://" in store:
        raise click.UsageError("--work DIR is needed with an s3:// store")
    return Path(store)


@main.group()
def central():
    """The central receiver: takes every box's recordings and custody, confirms them."""


@central.command("run")
@click.option("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT.")
@store_url_option
@work_option
@index_option
@click.option("--workers", default=2, show_default=True, help="Workers in the shared subscription.")
@click.option(
    "--ca", type=click.Path(dir_okay=False), help="CA bundle for the broker's certificate."
)
@click.option("--cert", type=click.Path(dir_okay=False), help="Client certificate (mutual TLS).")
@click.option("--key", type=click.Path(dir_okay=False), help="Client certificate's key.")
@click.option("--username", default="", help="Broker user name.")
@click.option("--password-file", type=click.Path(dir_okay=False), help="File holding the password.")
@handle_errors
def run_central(broker, store, work, index_spec, workers, ca, cert, key, username, password_file):
    """Receive from every box until stopped (SIGTERM or Ctrl-C)."""
    from edgebox.central.worker import central_settings, run_until, start_workers
    from edgebox.lowlevel import allocator
    from edgebox.lowlevel.signals import wait_for_signal

    allocator.tune()

    password = Path(password_file).read_text().strip() if password_file else ""
    settings = central_settings(
        broker, ca=ca, cert=cert, key=key, username=username, password=password
    )
    work = work_folder(store, work, index_spec)
    started = start_workers(work, settings, workers, store, index_spec)
    where = f"store {store}, work {work}, index {index_spec.split('@')[-1]}"
    click.echo(f"central: {workers} worker(s) on {broker}, {where}", err=True)
    stop = threading.Event()
    threading.Thread(target=run_until, args=(stop, started), daemon=True).start()
    try:
        wait_for_signal(stop)
    finally:
        stop.set()
        for worker in started:
            worker.stop()


@central.command("list")
@click.option(
    "--store",
    "--work",
    "store",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Central's store folder, or with an s3:// store its --work folder.",
)
@index_option
@json_option
@handle_errors
def list_central(store, index_spec, as_json):
    """What central holds: box, recording id, evidence and stored-bytes SHA-256, completeness."""
    from edgebox.central.index import open_index
    from edgebox.sync.protocol import is_replica_transfer

    index = open_index(index_spec, work_folder(str(store), store, index_spec))
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

    for folder in sorted(p.parent for p in (store / "transfers").glob("*/*/init.json")):
        if is_replica_transfer(folder.name):
            continue  # a replica file, not a recording (see `edgebox central replica`)
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


@central.command("export")
@click.argument("recording_id")
@store_url_option
@work_option
@index_option
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Central's X25519 private key (unencrypted PEM) the recording is wrapped to.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to create for the package (must not exist, or be empty).",
)
@click.option("--box", "box_id", help="The box the recording came from (when ids collide).")
@json_option
@handle_errors
def export_central(recording_id, store, work, index_spec, key_file, out, box_id, as_json):
    """Write RECORDING_ID's evidence package: clip, vault copy, signed manifest, custody."""
    from edgebox.central.blobs import open_store
    from edgebox.central.export import export_package
    from edgebox.cli.packages import describe_package
    from edgebox.keys import x25519_private_from_file

    private = x25519_private_from_file(key_file)
    folder = work_folder(store, work, index_spec)
    blobs = open_store(store) if "://" in store else None
    result = export_package(
        folder, recording_id, private, out, box_id=box_id, blobs=blobs, index_spec=index_spec
    )
    emit(result, as_json, describe_package)


@central.command("verify-package")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
@handle_errors
def verify_package_central(folder, as_json):
    """The same check as `edgebox verify-package FOLDER` (kept for central hosts' scripts)."""
    from edgebox.cli.packages import verify_and_exit

    verify_and_exit(folder, as_json)


@central.command("replica")
@click.argument("box_id")
@click.option(
    "--store",
    required=True,
    help="Central's store folder (or its --work folder), or an s3:// store: then the copy "
    "in the bucket is shown, checked or exported.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Read back and re-hash every file of the copy; exit 1 when one is damaged.",
)
@click.option(
    "--export",
    "export_to",
    type=click.Path(path_type=Path),
    help="Copy the current set to this folder (new or empty), checking every file's hash.",
)
@json_option
@handle_errors
def replica_central(box_id, store, check, export_to, as_json):
    """Central's copy of a box's Litestream replica: where it is, how far it goes."""
    from edgebox.central.replicas import ReplicaStore

    if "://" in store:
        report = _replica_in_store(store, box_id, check, export_to)
    elif export_to is not None:
        report = ReplicaStore(Path(store), box_id).export(export_to)
    elif check:
        report = ReplicaStore(Path(store), box_id).check()
    else:
        report = ReplicaStore(Path(store), box_id).report()

    def text(r):
        click.echo(
            f"box {r['box_id']}: set {r['set']} at txid {r['txid']}, {r['files']} files, "
            f"{r['bytes']} bytes, received {r['received_at']}"
        )
        click.echo(f"restore with: edgebox restore --from {r.get('exported_to') or r['path']}")
        for path in r["damaged"]:
            click.echo(f"DAMAGED {path}: the box's next replica set brings it again")
        for path in r["kept"]:
            click.echo(f"earlier replica kept at {path}")

    emit(report, as_json, text)
    sys.exit(1 if report["damaged"] else 0)


def _replica_in_store(store: str, box_id: str, check: bool, export_to: Path | None) -> dict:
    """The box's replica set as the blob store holds it: shown, read back and hashed
    (`check`), or laid out in `export_to`."""
    from edgebox.central.blobs import open_store
    from edgebox.central.replica_blobs import check_set, current_set, restore_set

    blobs = open_store(store)
    damaged = []
    if export_to is not None:
        record = restore_set(blobs, box_id, export_to)
    elif check:
        record, damaged = check_set(blobs, box_id)
    else:
        record = current_set(blobs, box_id)
    report = {
        "box_id": box_id,
        "path": f"{blobs.url}/replicas/{box_id}/current.json",
        "set": record["seq"],
        "txid": record["txid"],
        "files": len(record["files"]),
        "bytes": record["bytes"],
        "received_at": record["received_at"],
        "kept": [],
        "damaged": damaged,
    }
    return {**report, "exported_to": str(export_to)} if export_to else report
