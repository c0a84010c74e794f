"""Evidence packages on the command line: `edgebox export` on the box, `edgebox verify-package`
anywhere (`edgebox central export` and `edgebox central verify-package` share these)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgebox.cli import (
    config_option,
    emit,
    handle_errors,
    json_option,
    main,
    opened_box,
    read_secret,
)


def describe_package(result: dict) -> None:
    """Print what an export wrote, for people."""
    c = result["custody"]
    click.echo(f"wrote {result['package']}: {', '.join(result['files'])}")
    click.echo(f"clip {result['clip']} sha256 {result['evidence_sha256']}")
    click.echo(
        f"custody entries {c['first_seq']}..{c['last_seq']} of box {result['box_id']}, "
        f"signed at entry {c['checkpoint_seq']}; check with "
        f"`edgebox verify-package {result['package']}`"
    )


def verify_and_exit(folder: Path, as_json: bool) -> None:
    """Check the package in `folder`, print each check, and exit 0 only when all pass."""
    from edgebox.evidence.verify import verify_package

    report = verify_package(folder)

    def text(r):
        for check in r["checks"]:
            click.echo(f"{'OK' if check['ok'] else 'FAIL':<4}  {check['check']}: {check['detail']}")
        failed = sum(1 for c in r["checks"] if not c["ok"])
        verdict = "VERIFIED" if r["ok"] else f"NOT VERIFIED ({failed} check(s) failed)"
        click.echo(f"package {r['folder']}: {verdict}")

    emit(report.to_dict(), as_json, text)
    sys.exit(0 if report.ok else 1)


@main.command("verify-package")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
@handle_errors
def verify_package_cmd(folder, as_json):
    """Check an evidence package from a box or central with no key and neither box nor
    central; a failed check names the file or custody entry; exit 0 only when all pass."""
    verify_and_exit(folder, as_json)


@main.command()
@click.argument("recording_id")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to create for the package (must not exist, or be empty).",
)
@click.option("--secret-file", type=click.Path(dir_okay=False), help="Supervisor review secret.")
@click.option("--by", "actor", default="supervisor", help="Who exports (for the custody log).")
@config_option
@json_option
@handle_errors
def export(recording_id, out, secret_file, actor, config_file, as_json):
    """Write RECORDING_ID's evidence package (clip, vault copy, signed manifest, custody to a
    signed checkpoint, SHA256SUMS, VERIFY.md), decrypted with a supervisor's secret."""
    from edgebox.export import export_package

    with opened_box(config_file) as box:
        review = box.keys.unlock_review(read_secret(secret_file))
        result = export_package(box, recording_id, review, out, f"user:{actor}")
    emit(result, as_json, describe_package)
