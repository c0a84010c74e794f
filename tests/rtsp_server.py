"""A real RTSP camera for tests and benchmarks: GStreamer's RTSP server on loopback.

Run by Debian's system Python (`/usr/bin/python3`, which has python3-gst-1.0 and the
GstRtspServer typelib), never the venv:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam1 [--user U --password P]

Two kinds of picture:
- `clock` (default): small grey frames whose eight vertical bars spell the wall clock in
  half seconds modulo 256 (bar i is white when bit 7-i is set), so a test can read when a
  frame was made from the decoded picture itself, independently of the box's own clock;
- `file:PATH`: an H.264 stream from an MPEG-TS file, played once in real time from its
  start for each new session of a mount (make it as long as the run), for benchmarks.

It prints `ready` on standard output once it listens.
"""

from __future__ import annotations

import argparse
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

WIDTH, HEIGHT, FPS, BARS = 320, 240, 10, 8


def clock_frame(moment: float) -> bytes:
    """A GRAY8 frame whose bars spell int(moment * 2) % 256, most significant bar first."""
    value = int(moment * 2) % 256
    bar = WIDTH // BARS
    row = b"".join((b"\xff" if value >> (BARS - 1 - i) & 1 else b"\x10") * bar for i in range(BARS))
    return row * HEIGHT


class ClockFactory(GstRtspServer.RTSPMediaFactory):
    """One live pipeline per mount, fed from a timer with frames of the wall clock."""

    LAUNCH = (
        "( appsrc name=src is-live=true do-timestamp=true format=time "
        f"caps=video/x-raw,format=GRAY8,width={WIDTH},height={HEIGHT},framerate={FPS}/1 "
        "! videoconvert ! video/x-raw,format=I420 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={FPS} bitrate=300 "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )

    def __init__(self):
        super().__init__()
        self.set_launch(self.LAUNCH)
        self.set_shared(True)
        self.connect("media-configure", self._configure)

    def _configure(self, factory, media):
        source = media.get_element().get_child_by_name("src")
        ended = []
        media.connect("unprepared", lambda media: ended.append(True))
        GLib.timeout_add(1000 // FPS, self._push, source, ended)

    @staticmethod
    def _push(source, ended) -> bool:
        if ended:
            return False
        source.emit("push-buffer", Gst.Buffer.new_wrapped(clock_frame(time.time())))
        return True


def file_factory(path: str) -> GstRtspServer.RTSPMediaFactory:
    """A mount that plays an MPEG-TS H.264 file in real time (filesrc: the PLAY request's
    seek needs a seekable source)."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{path}" ! tsdemux ! h264parse '
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    return factory


def main() -> None:
    """Serve the mounts until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", action="append", required=True)
    parser.add_argument("--source", default="clock", help="clock, or file:PATH")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera-user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
    mounts = server.get_mount_points()
    for mount in args.mount:
        if args.source.startswith("file:"):
            factory = file_factory(args.source[5:])
        else:
            factory = ClockFactory()
        if args.user:
            factory.add_role_from_structure(
                Gst.Structure.from_string(
                    "camera-user, media.factory.access=(boolean)true, "
                    "media.factory.construct=(boolean)true"
                )[0]
            )
        mounts.add_factory(mount, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
