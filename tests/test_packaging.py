"""The wheel is complete on its own: the web assets ship inside it and the console script works."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import build_wheel

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_web_assets_and_runs(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgebox/_web/templates/recordings.html" in names
    assert "edgebox/_web/static/edgebox.css" in names
    for language in ("en", "nl", "fr", "de"):  # compiled at build by scripts/hatch_translations.py
        assert f"edgebox/_web/translations/{language}/LC_MESSAGES/messages.mo" in names
    assert any(name.endswith("entry_points.txt") for name in names)
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import edgebox.web as w; print(w.assets_dir())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
    )
    assert probe.stdout.strip() == str(target / "edgebox" / "_web"), probe.stderr
