"""What the tus extensions cost: one recording delivered plain, with its first chunk in the
creation POST, with a deferred length, and in two parallel parts joined by a final upload.

A real box (`edgebox init --demo`, `edgebox run` over HTTPS) and one enrolled camera; every
mode sends the same pseudo-footage in 8 MiB requests, interleaved, at least twice each. The
plain upload is the peer every other mode is measured against in the same run. The evidence
hash the box reports is checked against the bytes sent. Prints MiB/s (best, median), the
median ratio to plain, and for the parallel mode how long the final (joining) request took.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urljoin

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MIB, add_output_args, exit_on_sigterm, log, machine, publish  # noqa: E402
from bench.tus import TUS, DemoBox, Pattern, plain_session  # noqa: E402

HEADING = "tus modes (creation-with-upload, deferred length, concatenation)"
CHUNK = 8 * MIB
MODES = ("plain", "with-upload", "deferred", "parallel")


class Camera:
    """A raw tus client of one enrolled camera: each mode in a few requests."""

    def __init__(self, box: DemoBox, serial: str, token: str, pattern: Pattern):
        self.create_url = f"{box.url}/tus/"
        self.verify = box.cert
        self.pattern = pattern
        self.base = {"Tus-Resumable": TUS, "Authorization": f"Bearer {token}"}

    def _post(self, session, **headers):
        response = session.post(
            self.create_url, verify=self.verify, headers={**self.base, **headers}
        )
        if response.status_code != 201:
            raise RuntimeError(f"creation: {response.status_code} {response.text[:300]}")
        return response

    def _patches(self, session, url: str, start: int, end: int, offset: int = 0, last=None):
        """PATCH bytes [start+offset, end) of the pattern to `url` (upload offsets from
        `offset`); `last` extra headers go on the final PATCH. Returns the last response."""
        response = None
        while start + offset < end or response is None:
            n = min(CHUNK, end - start - offset)
            headers = {
                **self.base,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                **(last if last and start + offset + n >= end else {}),
            }
            body = self.pattern.chunk(start + offset, n)
            response = session.patch(url, data=body, verify=self.verify, headers=headers)
            if response.status_code != 204:
                raise RuntimeError(f"PATCH at {offset}: {response.status_code} {response.text}")
            offset += n
        return response

    def send(self, mode: str, size: int) -> dict:
        """Deliver one recording of `size` bytes in `mode`; the evidence hash and timings."""
        session = plain_session()
        started = time.perf_counter()
        join = None
        try:
            if mode == "plain":
                url = urljoin(
                    self.create_url,
                    self._post(session, **{"Upload-Length": str(size)}).headers["Location"],
                )
                done = self._patches(session, url, 0, size)
            elif mode == "with-upload":
                first = self.pattern.chunk(0, min(CHUNK, size))
                response = session.post(
                    self.create_url,
                    data=first,
                    verify=self.verify,
                    headers={
                        **self.base,
                        "Upload-Length": str(size),
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
                url = urljoin(self.create_url, response.headers["Location"])
                done = self._patches(session, url, 0, size, offset=len(first))
            elif mode == "deferred":
                url = urljoin(
                    self.create_url,
                    self._post(session, **{"Upload-Defer-Length": "1"}).headers["Location"],
                )
                done = self._patches(session, url, 0, size, last={"Upload-Length": str(size)})
            else:
                done, join = self._parallel(session, size)
        finally:
            session.close()
        return {
            "seconds": time.perf_counter() - started,
            "evidence": done.headers.get("EdgeBox-Evidence-Sha256"),
            "join": join,
        }

    def _parallel(self, session, size: int):
        half = size // 2
        bounds = [(0, half), (half, size)]
        urls: list[str | None] = [None, None]
        errors: list[BaseException] = []

        def part(index: int) -> None:
            own = plain_session()
            try:
                start, end = bounds[index]
                created = self._post(
                    own, **{"Upload-Length": str(end - start), "Upload-Concat": "partial"}
                )
                urls[index] = urljoin(self.create_url, created.headers["Location"])
                self._patches(own, urls[index], start, end)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                errors.append(exc)
            finally:
                own.close()

        threads = [threading.Thread(target=part, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        joining = time.perf_counter()
        final = self._post(session, **{"Upload-Concat": "final;" + " ".join(urls)})
        return final, time.perf_counter() - joining


def main() -> None:
    """Run the modes interleaved and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="32 MiB, one rep, print only")
    add_output_args(parser, "raw samples as JSON")
    args, unknown = parser.parse_known_args()
    if unknown:  # bench/run passes every benchmark the same options (e.g. --profile)
        log(f"bench: tus_modes ignores {' '.join(unknown)}")
    exit_on_sigterm()
    size = (32 if args.quick else args.size_mib) * MIB
    reps = 1 if args.quick else max(2, args.reps)
    root = Path(tempfile.mkdtemp(prefix="edgebox-tus-modes-", dir=args.workdir))
    box = DemoBox(root / "box", "bench-tus-modes", root / "box.log")
    samples: dict[str, list[dict]] = {mode: [] for mode in MODES}
    try:
        box.start(["BENCH-MODES"])
        pattern = Pattern(CHUNK)
        camera = Camera(box, *box.cameras[0], pattern)
        expected = pattern.sha256(size)
        for rep in range(reps):
            for mode in MODES:
                result = camera.send(mode, size)
                if result["evidence"] != expected:
                    raise RuntimeError(f"{mode}: evidence {result['evidence']} != {expected}")
                samples[mode].append(result)
                log(f"bench: rep {rep + 1} {mode}: {size / MIB / result['seconds']:.0f} MiB/s")
    finally:
        box.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    publish(args, HEADING, _report(samples, size, reps), {"size": size, "samples": samples})


def _report(samples: dict, size: int, reps: int) -> str:
    rate = {m: [size / MIB / s["seconds"] for s in samples[m]] for m in MODES}
    plain = statistics.median(rate["plain"])
    lines = [
        f"## {HEADING}",
        "",
        f"`python bench/tus_modes.py` — one {size // MIB} MiB recording per mode over HTTPS to a",
        f"real box, 8 MiB requests, {reps} interleaved reps; {machine()}.",
        "",
        "| mode | best MiB/s | median MiB/s | median vs plain |",
        "| --- | --- | --- | --- |",
    ]
    for mode in MODES:
        median = statistics.median(rate[mode])
        lines.append(f"| {mode} | {max(rate[mode]):.0f} | {median:.0f} | {median / plain:.2f} |")
    joins = [s["join"] for s in samples["parallel"]]
    lines += [
        "",
        f"The parallel mode's final request (decrypting both parts into one new vault file) took "
        f"{min(joins):.2f} s at best, {statistics.median(joins):.2f} s median "
        f"({size / MIB / statistics.median(joins):.0f} MiB/s of joining; the parts go up "
        "concurrently on one box, so parallel is no faster than plain here). A deferred upload's "
        "last PATCH reads the finished file back once for its stored hash (its header changed "
        "after hashing began); the vault writes around the page cache, so that is a disk read, "
        "most of the gap to plain on a slow disk.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
