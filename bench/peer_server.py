"""The benchmark's peer: a plain, unencrypting tus server (tuspyserver's FastAPI router on uvicorn).

Started by `bench/ingest.py` as a subprocess; it stores the uploaded bytes as-is under
`--files-dir` (nothing is encrypted or hashed). Two storage modes:

* default: tuspyserver's historical path, which appends each received piece of the body
  with write()+flush() and never fsyncs (durability left to the page cache);
* `--fsync`: tuspyserver's opt-in `LocalFileStorage` backend, which buffers each PATCH body
  and fsyncs it before advancing the offset (the same durability the box gives per PATCH).

    python bench/peer_server.py --port 8080 --files-dir /tmp/x [--ssl-certfile C --ssl-keyfile K]
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from tuspyserver import create_tus_router
from tuspyserver.storage.local import LocalFileStorage


def make_app(files_dir: str, fsync: bool) -> FastAPI:
    """A FastAPI app with the tus router mounted at /files/."""
    app = FastAPI()
    storage = LocalFileStorage(files_dir) if fsync else None
    app.include_router(create_tus_router(prefix="files", files_dir=files_dir, storage=storage))
    return app


def main() -> None:
    """Parse the options and serve the tus router on uvicorn until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--files-dir", required=True)
    parser.add_argument(
        "--fsync", action="store_true", help="use LocalFileStorage (fsync per PATCH)"
    )
    parser.add_argument("--ssl-certfile")
    parser.add_argument("--ssl-keyfile")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.files_dir, args.fsync),
        host=args.host,
        port=args.port,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
