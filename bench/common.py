"""What every benchmark needs: processes, ports, CPU and memory readers, the machine, reporting.

Imported as `bench.common`; the benchmark scripts put the repository root on `sys.path` first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
MB = 1e6
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def log(message: str) -> None:
    """One progress line on stderr (stdout is for the report)."""
    print(message, file=sys.stderr, flush=True)


# -- ports and processes ----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.05):
            return True
    except OSError:
        return False


class Proc:
    """A subprocess in its own process group, logged to a file, stopped by its own pid."""

    running: list[Proc] = []

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        self.pid = self.popen.pid
        Proc.running.append(self)

    def alive(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    def text(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        """The last `lines` lines of its output."""
        return "\n".join(self.text().splitlines()[-lines:])

    def events(self) -> list[dict]:
        """The JSON lines a helper process printed."""
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_event(self, name: str, timeout: float) -> dict:
        """The first JSON line with `"event": name`, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == name:
                    return event
            if not self.alive():
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: no {name!r} event:\n{self.tail()}")

    def cpu(self) -> float:
        """user+sys seconds of the process and its children (0 if gone)."""
        return tree_cpu(self.pid)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s) to the whole group; close the log."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Children left in the group (e.g. a supervised litestream) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        with contextlib.suppress(ValueError):
            Proc.running.remove(self)


def tree_cpu(pid: int) -> float:
    """user+sys seconds of process `pid` and its children (0 if gone)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        main = psutil.Process(pid)
        for proc in [main, *main.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def proc_cpu(pid: int | None) -> float:
    """user+sys seconds of process `pid` alone (0 if gone)."""
    with contextlib.suppress(psutil.Error, TypeError):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    return 0.0


def cpu_self() -> float:
    """user+sys seconds of this process."""
    times = os.times()
    return times.user + times.system


def vm_hwm(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM), 0 if unreadable."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm(pid: int) -> int:
    """Reset the process's VmHWM to its current RSS (/proc/PID/clear_refs); return the old."""
    before = vm_hwm(pid)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return before


# -- the edgebox command ----------------------------------------------------------------------


def edgebox_cmd() -> list[str]:
    """argv prefix for the `edgebox` command of this Python environment."""
    exe = Path(sys.executable).with_name("edgebox")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgebox"]


def clean_env(**extra: str) -> dict:
    """The environment without EDGEBOX_* settings of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEBOX_")}
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> str:
    """`edgebox ARGS...` to completion; its stdout, or RuntimeError with its output."""
    out = subprocess.run(
        [*edgebox_cmd(), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"edgebox {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


# -- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine() -> str:
    """`nproc=…, CPU, RAM, Linux …, Python …` for a report's first paragraph."""
    return (
        f"nproc={os.cpu_count()}, {cpu_model()}, "
        f"{psutil.virtual_memory().total / GIB:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def filesystem_of(path: Path) -> str:
    """`device (fstype) on mountpoint` of the filesystem holding `path`."""
    path = path.resolve()
    best = None
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and (
            best is None or len(part.mountpoint) > len(best.mountpoint)
        ):
            best = part
    return f"{best.device} ({best.fstype}) on {best.mountpoint}" if best else "?"


# -- measurements and reports -----------------------------------------------------------------


@dataclass
class Timing:
    """One timed transfer: `nbytes` in `seconds`."""

    seconds: float
    nbytes: int

    @property
    def mbps(self) -> float:
        """Decimal megabytes per second."""
        return self.nbytes / self.seconds / MB


class Rates:
    """Best and median MB/s over the `samples` (Timings) of a measurement."""

    samples: list

    def best(self) -> float:
        """The highest MB/s of the samples."""
        return max(s.mbps for s in self.samples)

    def median(self) -> float:
        """The median MB/s of the samples."""
        return statistics.median(s.mbps for s in self.samples)


def median_or_none(values: list[float]) -> float | None:
    """statistics.median, or None for no values."""
    return statistics.median(values) if values else None


def fmt(value, spec=".0f", none="–") -> str:
    """`value` formatted with `spec`, or `none` for None."""
    return none if value is None else format(value, spec)


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the `## heading` section of `path` (up to the next `## ` heading), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `bench/run`.\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def add_output_args(parser: argparse.ArgumentParser, json_help: str) -> None:
    """The options every benchmark has: where to work, where the report and raw figures go."""
    parser.add_argument("--workdir", help="parent of the temp dir (default: system temp)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", help=json_help)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")


def exit_on_sigterm() -> None:
    """SIGTERM ends the benchmark like an exception, so its `finally` blocks stop the servers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def publish(args: argparse.Namespace, heading: str, section: str, raw: dict) -> None:
    """Print the section; write `raw` to --json; rewrite RESULTS.md unless --quick/--no-write."""
    print(section)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    if not args.no_write and not args.quick:
        write_section(Path(args.results), heading, section)
        log(f"bench: wrote the {heading} section of {args.results}")
