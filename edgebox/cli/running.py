"""Commands that run things: the box itself, the demo, and a simulated camera."""

from __future__ import annotations

from pathlib import Path

import click

from edgebox.cli import config_option, handle_errors, load, main
from edgebox.config import parse_listen
from edgebox.lowlevel.signals import wait_for_signal


@main.command()
@config_option
@click.option("--listen", metavar="HOST:PORT", help="Override server.listen from the config.")
@handle_errors
def run(config_file, listen):
    """Run the box: HTTPS ingest and web UI, custody checkpoints and scheduled jobs."""
    from edgebox.box import Box
    from edgebox.lowlevel import allocator

    allocator.tune()

    box = Box(load(config_file)).start(parse_listen(listen) if listen else None)
    click.echo(f"edgebox {box.config.box.box_id} serving {box.url}", err=True)
    try:
        wait_for_signal(box.stop_event)
    finally:
        box.stop()


@main.command()
@click.option(
    "--dir",
    "folder",
    default="demo-box",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo box lives.",
)
@click.option(
    "--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT for the web UI."
)
@click.option("--cameras", "camera_count", default=2, show_default=True, help="Simulated cameras.")
@click.option("--clips", default=2, show_default=True, help="Clips each camera records.")
@click.option(
    "--seconds", default=40.0, show_default=True, help="Length of each clip (30 s pre-event)."
)
@click.option("--once", is_flag=True, help="Exit when the cameras are done instead of serving on.")
@click.option("--offline", is_flag=True, help="No local broker and central: the box runs alone.")
@handle_errors
def demo(folder, listen, camera_count, clips, seconds, once, offline):
    """Make a demo box with cameras, a local broker and central, and show where to look."""
    from edgebox.demo import run_demo

    run_demo(
        folder,
        listen=listen,
        cameras=camera_count,
        clips=clips,
        seconds=seconds,
        once=once,
        with_central=not offline,
    )


@main.command("camera-sim")
@click.option(
    "--state",
    "state_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The camera's own folder (identity, pinned certificate, clips not yet delivered).",
)
@click.option("--box-url", help="The box's URL, e.g. https://192.168.50.1:8443 (needed to pair).")
@click.option("--code", help="One-time pairing code from `edgebox cameras pair`.")
@click.option("--cert-sha256", help="The box certificate's SHA-256 printed with the code.")
@click.option("--clips", default=1, show_default=True, help="How many clips to record and upload.")
@click.option("--seconds", default=40.0, show_default=True, help="Length of each clip.")
@click.option("--pre-event", default=30.0, show_default=True, help="Pre-event buffer in seconds.")
@click.option("--user-id", default="officer-1", show_default=True, help="Who wears the camera.")
@click.option("--category", default="patrol", show_default=True, help="Recording category.")
@click.option("--chunk-mib", default=4, show_default=True, help="tus PATCH size in MiB.")
@handle_errors
def camera_sim(
    state_dir, box_url, code, cert_sha256, clips, seconds, pre_event, user_id, category, chunk_mib
):
    """Act as a body-worn camera: pair once, record real MP4 clips, upload them with tus."""
    from edgebox.camera import run_camera

    run_camera(
        state_dir,
        box_url=box_url,
        code=code,
        cert_sha256=cert_sha256,
        clips=clips,
        seconds=seconds,
        pre_event=pre_event,
        user_id=user_id,
        category=category,
        chunk_size=chunk_mib << 20,
        log=lambda line: click.echo(line, err=True),
    )
