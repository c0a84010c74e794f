"""py-spy for the benchmarks: record a process, then name its hot frames and their source lines.

Ingest profiles the box over one upload and reports self time over the whole process
(`summarize_pyspy`); sync profiles box and central over one drain and reports per busy
thread, with idle samples, what share went to waiting, fsync, hashing or TLS
(`summarize_threads`).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

from bench.common import ROOT


def pyspy() -> str | None:
    """The py-spy executable (on PATH or next to this Python), or None."""
    found = shutil.which("py-spy")
    if found:
        return found
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else None


class Spy:
    """py-spy recording one process (raw collapsed stacks) into `out` for up to `seconds`."""

    def __init__(self, pid: int, out: Path, *, rate: int, seconds: int, threads: bool = False):
        self.out = out
        self.errors = out.with_name(out.name + ".log")
        argv = [pyspy() or "py-spy", "record", "-p", str(pid), "-r", str(rate), "-d", str(seconds)]
        if threads:
            argv += ["--idle", "--threads"]  # idle samples too, each thread a stack root
        argv += ["--nonblocking", "--format", "raw", "-o", str(out)]
        with open(self.errors, "wb") as errors:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True
            )

    def wait(self, timeout: float) -> None:
        """Wait for py-spy to finish its `seconds` and write its file."""
        self.proc.wait(timeout=timeout)

    def finish(self) -> str:
        """Stop now (SIGINT makes py-spy write its file); the stacks it wrote ("" if none)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        try:
            return self.out.read_text()
        except OSError:
            return ""

    def stderr(self) -> str:
        """What py-spy said on stderr."""
        try:
            return self.errors.read_text(errors="replace")
        except OSError:
            return ""


# -- naming frames ----------------------------------------------------------------------------


def source_snapshot() -> dict[str, list[str]]:
    """Lines of every edgebox module, keyed like py-spy names them (`edgebox/vault.py`)."""
    import edgebox

    package = Path(edgebox.__file__).resolve().parent
    return {
        f"edgebox/{p.relative_to(package)}": p.read_text(errors="replace").splitlines()
        for p in package.rglob("*.py")
    }


def source_text(frame: str, sources: dict[str, list[str]] | None = None) -> str:
    """The source line of a `func (file:line)` frame: from `sources`, else from disk; or ""."""
    match = re.search(r"\((.+):(\d+)\)$", frame)
    if not match:
        return ""
    name, number = match.group(1), int(match.group(2))
    lines = (sources or {}).get(name)
    if lines is None:
        paths = sysconfig.get_paths()
        for base in [ROOT, paths["stdlib"], paths["purelib"], *sys.path]:
            path = Path(base) / name
            if path.is_file():
                with contextlib.suppress(OSError):
                    lines = path.read_text(errors="replace").splitlines()
                    break
    if lines and 0 < number <= len(lines):
        return lines[number - 1].strip()
    return ""


def describe(frame: str, sources: dict[str, list[str]] | None = None) -> str:
    """`func (file:line)` plus the text of that line, when it can be found."""
    text = source_text(frame, sources)
    return f"{frame}: `{text}`" if text else frame


def samples(raw: str):
    """(frames, count) per line of py-spy's raw collapsed-stack output."""
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


# -- whole process (ingest) -------------------------------------------------------------------


def summarize_pyspy(raw: str, sources: dict | None = None, top: int = 15) -> dict:
    """Self and inclusive sample shares from py-spy's collapsed-stack output."""
    own, incl, total = Counter(), Counter(), 0
    for frames, n in samples(raw):
        total += n
        own[frames[-1]] += n  # with file:line, to tell e.g. hashing from encrypting apart
        for f in {re.sub(r" \(.*?\)$", "", f) for f in frames}:
            incl[f] += n
    return {
        "total": total,
        "self": [(describe(f, sources), n / total) for f, n in own.most_common(top)]
        if total
        else [],
        "inclusive": [(f, n / total) for f, n in incl.most_common(top * 2)] if total else [],
    }


# -- per thread (sync) ------------------------------------------------------------------------


def category(frame: str) -> str:
    """waiting / fsync / hashing / TLS / other, from a leaf frame and its source line."""
    text = source_text(frame)
    if re.search(r"select\(|\.wait\(|waiter\.acquire", text):
        return "waiting"
    if "fsync(" in text:
        return "fsync"
    if frame.startswith(("file_sha256", "sha256_hex")) or "sha256(" in text:
        return "hashing"
    if frame.startswith("SSLSocket."):
        return "TLS"
    return "other"


def summarize_threads(
    raw: str, prefixes: tuple[str, ...], top: int = 6
) -> tuple[list[str], dict[str, dict]]:
    """Per busy thread: report lines of its top leaf frames (self time, idle included), and
    per thread the share of each category (plus `fsync_sites`, the functions that fsync)."""
    threads: dict[str, Counter] = {}
    for frames, count in samples(raw):
        match = re.match(r"thread \(\d+\): (.*)", frames[0])
        name = match.group(1) if match else frames[0]
        if not name.startswith(prefixes) or len(frames) < 2:
            continue
        threads.setdefault(name, Counter())[frames[-1]] += count
    out: list[str] = []
    shares_by_thread: dict[str, dict] = {}
    for name, leaves in sorted(threads.items()):
        total = sum(leaves.values())
        shares = Counter()
        for frame, n in leaves.items():
            shares[category(frame)] += n / total
        out.append(
            f"thread `{name}` ({total} samples; "
            + ", ".join(f"{k} {v:.0%}" for k, v in shares.most_common() if v >= 0.005)
            + "):"
        )
        for frame, n in leaves.most_common(top):
            out.append(f"  - {n / total:5.1%} {describe(frame)}")
        shares_by_thread[name] = dict(shares)
        shares_by_thread[name]["fsync_sites"] = sorted(
            {f.split(" ")[0] for f in leaves if category(f) == "fsync"}
        )
    return out, shares_by_thread
