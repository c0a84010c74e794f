"""`edgebox compliance`: the compliance report on the box itself, shown or exported."""

from __future__ import annotations

from pathlib import Path

import click

from edgebox.cli import config_option, emit, handle_errors, json_option, main, opened_box


@main.command("compliance")
@click.option("--from", "start", help="Recordings started at or after this RFC 3339 time.")
@click.option("--to", "end", help="Recordings started before this RFC 3339 time.")
@click.option("--camera", help="Only this camera serial.")
@click.option("--user", help="Only this camera wearer (user id).")
@click.option("--category", help="Only this recording category.")
@click.option(
    "--check",
    help="Comma list of pre_event, warning, at_risk, legal_hold, silent_camera (default all).",
)
@click.option("--limit", help="Rows shown per check (1 to 1000, default 100).")
@click.option(
    "--export",
    "fmt",
    type=click.Choice(["csv", "html"]),
    help="Write the whole report in this format to --out (logged in custody).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Export file.")
@click.option("--by", "actor", default="supervisor", help="Who exports (for the custody log).")
@config_option
@json_option
@handle_errors
def compliance_cmd(
    start, end, camera, user, category, check, limit, fmt, out, actor, config_file, as_json
):
    """Which recordings break a rule (pre-event, warning answer, at risk, legal hold) and which
    cameras went silent, with counts; --export writes it for the supervisory body."""
    from edgebox import compliance, compliance_export

    args = {"from": start, "to": end, "camera": camera, "user": user, "category": category}
    args.update(check=check, limit=limit)
    filters = compliance.parse_filters({k: v for k, v in args.items() if v is not None})
    if fmt and out is None:
        raise click.UsageError("--export needs --out FILE")
    if out is not None and not fmt:
        raise click.UsageError("--out goes with --export csv|html")
    if out is not None and out.exists():
        raise click.UsageError(f"{out} exists; choose a new file")
    with opened_box(config_file) as box:
        if fmt:
            done = compliance_export.export(box, filters, fmt, f"user:{actor}")
            out.write_bytes(done.body)
            result = {
                "file": str(out),
                "sha256": done.sha256,
                "custody_seq": done.custody_seq,
                "format": fmt,
            }
            emit(result, as_json, lambda r: click.echo(f"wrote {r['file']} (sha256 {r['sha256']})"))
            return
        report = compliance.build(box, filters)

    def text(r):
        click.echo(f"compliance report of box {r['box_id']} at {r['generated_at']}")
        for check, section in r["sections"].items():
            click.echo(f"{check}: {section['count']}")
            for item in section["items"]:
                click.echo(f"  {item['id']}  {item['serial']:<12} {item['finding']}")

    emit(report, as_json, text)
