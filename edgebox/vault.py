"""The encrypted blob format: streaming writer, random-access reader, verification, header rewrite.

A vault file is a fixed-size header area followed by segments. Every segment
holds `segment_size` bytes of plaintext (the last one fewer) sealed with
AES-256-GCM or ChaCha20-Poly1305 under a key derived from the recording's own
random data key. The nonce is the segment counter plus a last-segment flag (the
STREAM construction), and every segment's associated data is the hash of the
header's immutable core, so reordering, truncation, duplication, splicing and a
swapped header are all detected. The full specification is docs/vault-format.md.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import struct
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgebox.errors import VaultError
from edgebox.lowlevel import direct_append
from edgebox.lowlevel.durable import fsync_dir

MAGIC = b"EBVAULT\x01"
FORMAT_VERSION = 1
HEADER_AREA = 4096
TAG = 16
HOLD_LIMIT = 8 << 20  # plaintext a checksummed chunk may carry: held in memory until checked
_PREFIX = struct.Struct(">8sII")  # magic, header area size, header body length
CIPHERS = {"AES-256-GCM": AESGCM, "ChaCha20-Poly1305": ChaCha20Poly1305}


def canonical(value) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces) used for MACs and hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hkdf(data_key: bytes, salt: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=purpose).derive(data_key)


def nonce(index: int, last: bool) -> bytes:
    """The 96-bit nonce of segment `index`: an 11-byte big-endian counter and the last flag."""
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def segment_count(plaintext_size: int, segment_size: int) -> int:
    """How many segments a plaintext of this size takes (an empty file still has one)."""
    return max(1, -(-plaintext_size // segment_size))


@dataclass
class Header:
    """A parsed vault header: the immutable core, the key stanzas, the core's MAC."""

    core: dict
    stanzas: list[dict]
    mac: str
    area: int = HEADER_AREA

    @property
    def segment_size(self) -> int:
        """Plaintext bytes per segment."""
        return int(self.core["segment_size"])

    @property
    def length_known(self) -> bool:
        """Whether the recording's size is known (a deferred-length upload learns it late)."""
        return self.core["plaintext_size"] is not None

    @property
    def plaintext_size(self) -> int:
        """The recording's size in bytes."""
        if self.core["plaintext_size"] is None:
            raise VaultError("the recording's length is not known yet", status=409)
        return int(self.core["plaintext_size"])

    @property
    def segments(self) -> int:
        """Number of segments the complete file holds."""
        return segment_count(self.plaintext_size, self.segment_size)

    @property
    def stored_size(self) -> int:
        """Size of the complete vault file in bytes."""
        return self.area + self.plaintext_size + TAG * self.segments

    @property
    def aad(self) -> bytes:
        """Associated data of every segment: SHA-256 of the canonical core; for a deferred-length
        file, of the core with `plaintext_size` null, as it was when its first segment was
        sealed (the size, set later, is covered by the header MAC and the last-segment flag)."""
        core = self.core
        if core.get("length_deferred"):
            core = {**core, "plaintext_size": None}
        return hashlib.sha256(canonical(core)).digest()

    def encode(self) -> bytes:
        """The header area's bytes, padded to its fixed size."""
        body = canonical({"core": self.core, "stanzas": self.stanzas, "mac": self.mac})
        if _PREFIX.size + len(body) > self.area:
            raise VaultError(f"header too large ({len(body)} bytes) for a {self.area}-byte area")
        raw = _PREFIX.pack(MAGIC, self.area, len(body)) + body
        return raw + b"\x00" * (self.area - len(raw))

    def core_mac(self, data_key: bytes) -> str:
        """HMAC-SHA256 of the core under a key derived from the data key."""
        key = _hkdf(data_key, base64.b64decode(self.core["salt"]), b"edgebox-vault-header")
        return hmac.new(key, canonical(self.core), hashlib.sha256).hexdigest()

    def check_mac(self, data_key: bytes) -> None:
        """Raise VaultError unless the core MAC matches under this data key."""
        if not hmac.compare_digest(self.core_mac(data_key), self.mac):
            raise VaultError(
                "header MAC mismatch: wrong data key, or the header was altered "
                "or belongs to another file"
            )

    def cipher(self, data_key: bytes):
        """The AEAD that seals this file's segments."""
        suite = self.core["suite"]
        key = _hkdf(data_key, base64.b64decode(self.core["salt"]), b"edgebox-vault-payload")
        return CIPHERS[suite](key)

    def stanza(self, recipient: str) -> bytes:
        """The wrapped data key for `recipient` (e.g. 'central:<kid>' or 'review:<kid>')."""
        for item in self.stanzas:
            if item["recipient"] == recipient:
                try:
                    return base64.b64decode(item["body"], validate=True)
                except ValueError:  # binascii.Error: a damaged stanza
                    raise VaultError(f"key stanza for {recipient} is not base64") from None
        raise VaultError(f"no key stanza for {recipient}", status=403)

    @classmethod
    def parse(cls, raw: bytes, source: str = "vault file") -> Header:
        """Parse header-area bytes, raising a precise VaultError on any malformation."""
        if len(raw) < _PREFIX.size:
            raise VaultError(f"{source}: truncated header ({len(raw)} bytes)")
        magic, area, length = _PREFIX.unpack_from(raw)
        if magic != MAGIC:
            raise VaultError(f"{source}: not an EdgeBox vault file (bad magic)")
        if area < _PREFIX.size or area > 1 << 20 or _PREFIX.size + length > area:
            raise VaultError(f"{source}: corrupt header sizes (area {area}, body {length})")
        if len(raw) < area:
            raise VaultError(f"{source}: truncated header ({len(raw)} of {area} bytes)")
        try:
            body = json.loads(raw[_PREFIX.size : _PREFIX.size + length])
            core, stanzas, mac = body["core"], body["stanzas"], body["mac"]
            if core["version"] != FORMAT_VERSION or core["suite"] not in CIPHERS:
                raise ValueError(f"unsupported version {core['version']} or suite {core['suite']}")
            _check_fields(core, stanzas, mac)
        except (ValueError, KeyError, TypeError) as exc:
            raise VaultError(f"{source}: corrupt header ({exc})") from None
        except RecursionError:  # JSON nested past the decoder's depth: a hostile header
            raise VaultError(f"{source}: corrupt header (nested too deep)") from None
        if raw[_PREFIX.size + length : area].strip(b"\x00"):
            raise VaultError(f"{source}: corrupt header (bytes after the header body)")
        return cls(core=core, stanzas=stanzas, mac=mac, area=area)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(core: dict, stanzas, mac) -> None:
    # Sizes drive offsets and a keyless check_structure must not crash on them,
    # so their types are checked here rather than trusted until the MAC is checked.
    if not _is_int(core["segment_size"]) or core["segment_size"] < 1:
        raise ValueError(f"bad segment_size {core['segment_size']!r}")
    deferred_open = core["plaintext_size"] is None and core.get("length_deferred") is True
    if not deferred_open and (not _is_int(core["plaintext_size"]) or core["plaintext_size"] < 0):
        raise ValueError(f"bad plaintext_size {core['plaintext_size']!r}")
    try:
        salt = base64.b64decode(core["salt"], validate=True)
    except (ValueError, TypeError):
        salt = b""
    if len(salt) != 16:
        raise ValueError("bad salt: not 16 bytes of base64")
    if not isinstance(core["recording_id"], str):
        raise ValueError("bad recording_id")
    if not isinstance(mac, str):
        raise ValueError("bad mac")
    if not isinstance(stanzas, list) or not all(
        isinstance(item, dict)
        and isinstance(item.get("recipient"), str)
        and isinstance(item.get("body"), str)
        for item in stanzas
    ):
        raise ValueError("bad key stanzas")


def read_header(path: Path) -> Header:
    """Read and parse the header of a vault file."""
    with open(path, "rb") as handle:
        first = handle.read(_PREFIX.size)
        if len(first) == _PREFIX.size and first[:8] == MAGIC:
            area = _PREFIX.unpack(first)[1]
            first += handle.read(max(0, min(area, 1 << 20) - _PREFIX.size))
        return Header.parse(first, str(path))


def new_header(
    *,
    recording_id: str,
    device_id: str,
    plaintext_size: int | None,
    data_key: bytes,
    stanzas: list[dict],
    suite: str = "AES-256-GCM",
    segment_size: int = 1 << 20,
    created_at: str = "",
    extra: dict | None = None,
) -> Header:
    """Build the header of a new recording and MAC its core under the data key; a
    `plaintext_size` of None makes a deferred-length file (`Writer.declare_length` later)."""
    if suite not in CIPHERS:
        raise VaultError(f"unknown suite {suite!r}", status=400)
    if not (
        _is_int(segment_size)
        and segment_size > 0
        and (plaintext_size is None or (_is_int(plaintext_size) and plaintext_size >= 0))
    ):
        raise VaultError(
            f"bad sizes (segment {segment_size!r}, plaintext {plaintext_size!r})", status=400
        )
    core = {
        "version": FORMAT_VERSION,
        "suite": suite,
        "segment_size": segment_size,
        "salt": base64.b64encode(os.urandom(16)).decode(),
        "recording_id": recording_id,
        "device_id": device_id,
        "plaintext_size": plaintext_size,
        "created_at": created_at,
    }
    if plaintext_size is None:
        core["length_deferred"] = True
    clash = sorted(set(core) & set(extra or {}))
    if clash:
        raise VaultError(
            f"extra header fields may not replace core fields: {', '.join(clash)}", status=400
        )
    core.update(extra or {})
    header = Header(core=core, stanzas=stanzas, mac="")
    header.mac = header.core_mac(data_key)
    return header


@dataclass
class Summary:
    """What a finished vault file holds: sizes and both hashes."""

    evidence_sha256: str
    stored_sha256: str
    size: int
    stored_size: int
    segments: int


@dataclass
class Mark:
    """A writer state to roll back to (a failed tus checksum must change nothing)."""

    file_length: int
    tail: bytes
    plain: object
    stored: object
    index: int


class _Hashing:
    """Runs hash updates in order on one helper thread, so hashing overlaps reading and sealing.

    hashlib releases the GIL for large buffers; at most `depth` updates wait at once,
    which bounds the memory held by references to pending blocks.
    """

    def __init__(self, depth: int = 2):
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque = deque()
        self._depth = depth
        self._last_read: dict[int, object] = {}  # id(buffer) -> its latest update

    def update(self, digest, data) -> None:
        """Queue `digest.update(data)`; `data` must not change afterwards (for a memoryview:
        until `wait_for` its buffer)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-hash")
        future = self._pool.submit(digest.update, data)
        self._pending.append(future)
        if isinstance(data, memoryview):
            self._last_read[id(data.obj)] = future
        while len(self._pending) > self._depth:
            self._pending.popleft().result()

    def wait_for(self, buffer) -> None:
        """Wait until no queued update reads `buffer` any more (updates run in order)."""
        future = self._last_read.pop(id(buffer), None)
        if future is not None:
            future.result()

    def drain(self) -> None:
        """Wait until every queued update is done."""
        while self._pending:
            self._pending.popleft().result()
        self._last_read.clear()

    def close(self) -> None:
        """Finish pending work and stop the helper thread."""
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


@dataclass
class Writer:
    """Encrypts a recording segment by segment as its bytes arrive; memory stays ~2 segments
    plus the staging buffers of its output (`edgebox.lowlevel.direct_append`), which segments are
    encrypted straight into."""

    path: Path
    header: Header
    data_key: bytes
    _fd: int = -1
    _index: int = 0
    _tail: bytearray = field(default_factory=bytearray)
    _plain: object = field(default_factory=hashlib.sha256)
    _stored: object = field(default_factory=hashlib.sha256)
    # Tags of segments sealed since the last mark, and of segments a rollback discarded:
    # a discarded index may only be sealed again with the same bytes (same tag), never
    # with different ones, or one nonce would protect two plaintexts.
    _since_mark: dict | None = None
    _held: list | None = None
    _hold_from: int = 0  # the offset where the checksummed chunk being held began
    _hashing: _Hashing = field(default_factory=_Hashing)
    _retired: dict = field(default_factory=dict)
    _out: direct_append.DirectAppender | None = None
    _summary: Summary | None = None  # set once the last segment is sealed and synced

    def __post_init__(self):
        self._aead = self.header.cipher(self.data_key)
        self._aad = self.header.aad

    def _open_output(self, fd: int, end: int) -> None:
        self._fd = fd
        # A staging buffer is refilled only once the hashing thread is done with it.
        pool = direct_append.pool_for(self.header.segment_size + TAG)
        self._out = direct_append.DirectAppender(
            self.path, fd, end, before_reuse=self._hashing.wait_for, pool=pool
        )

    @classmethod
    def create(cls, path: Path, header: Header, data_key: bytes) -> Writer:
        """Start a new partial vault file with its header written and synced."""
        path = Path(path)
        writer = cls(path=path, header=header, data_key=data_key)
        raw = header.encode()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, raw)
            writer._stored.update(raw)
            os.fsync(fd)
            fsync_dir(path.parent)
            writer._open_output(fd, len(raw))
        except BaseException:
            os.close(fd)
            raise
        return writer

    @classmethod
    def resume(cls, path: Path, data_key: bytes) -> Writer:
        """Reopen a partial file after a restart: keep every intact full segment, drop the rest."""
        path = Path(path)
        header = read_header(path)
        header.check_mac(data_key)
        writer = cls(path=path, header=header, data_key=data_key)
        stride = header.segment_size + TAG
        size = path.stat().st_size
        full = (size - header.area) // stride
        if header.length_known:
            full = min(full, header.segments - 1)  # a deferred file never seals its last early
        with open(path, "rb") as handle:
            writer._stored.update(handle.read(header.area))
            for index in range(full):
                blob = handle.read(stride)
                try:
                    plain = writer._aead.decrypt(nonce(index, False), blob, writer._aad)
                except InvalidTag:
                    break
                writer._plain.update(plain)
                writer._stored.update(blob)
                writer._index = index + 1
        keep = header.area + writer._index * stride
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
            writer._open_output(fd, keep)
        except BaseException:
            os.close(fd)
            raise
        return writer

    @property
    def offset(self) -> int:
        """Plaintext bytes accepted so far (durable segments plus the in-memory tail)."""
        if self._summary is not None:
            return self.header.plaintext_size
        return self._index * self.header.segment_size + len(self._tail)

    @property
    def hold_limit(self) -> int:
        """Plaintext a checksummed chunk may carry: its segments stay in memory until the
        checksum is checked (HOLD_LIMIT, or two segments where those are larger)."""
        return max(HOLD_LIMIT, 2 * self.header.segment_size)

    @property
    def durable_offset(self) -> int:
        """Plaintext bytes held in complete segments on disk."""
        return self._index * self.header.segment_size

    def _seal(self, data, last: bool) -> None:
        """Encrypt one segment: straight into the output's staging buffer, or, while a
        checksummed chunk holds its segments back, into a block of its own."""
        key = (self._index, last)
        if self._held is None:
            blob = self._out.reserve(len(data) + TAG)
            self._aead.encrypt_into(nonce(self._index, last), data, self._aad, blob)
        else:
            blob = self._aead.encrypt(nonce(self._index, last), data, self._aad)
        retired = self._retired.get(key)
        if retired is not None and retired != blob[-TAG:]:
            raise VaultError(
                f"segment {self._index} was already stored with different bytes; "
                "resend the original data from the upload's offset",
                status=409,
            )
        self._hashing.update(self._stored, blob)
        self._index += 1
        if self._held is None:
            self._written(key, blob)
            self._out.commit(len(blob))
        else:
            self._held.append((key, blob))

    def _written(self, key: tuple, blob) -> None:
        if self._since_mark is not None:
            self._since_mark[key] = bytes(blob[-TAG:])

    def _put(self, key: tuple, blob: bytes) -> None:
        self._written(key, blob)
        self._out.append(blob)

    def _flush_held(self) -> None:
        for key, blob in self._held or ():
            self._put(key, blob)
        if self._held:
            self._held = []

    def write(self, data: bytes | bytearray | memoryview, handed_over: bool = False) -> None:
        """Accept the next plaintext bytes; full segments (never the last) are sealed at once.

        The hashing thread keeps a reference to `data`, so anything but `bytes` is copied
        first, unless `handed_over` says the caller gives up the buffer (a fresh one it
        never touches again): then it is hashed and sealed as it is, without that copy.
        """
        known = self.header.length_known
        if known and self.offset + len(data) > self.header.plaintext_size:
            raise VaultError("more bytes than the recording's declared size", status=413)
        if self._held is not None and self.offset + len(data) - self._hold_from > self.hold_limit:
            raise VaultError(
                f"a chunk with Upload-Checksum may carry at most {self.hold_limit} bytes",
                status=413,
            )
        if not isinstance(data, bytes) and not handed_over:
            data = bytes(data)
        self._hashing.update(self._plain, data)
        size = self.header.segment_size
        # Unknown length: a full segment is sealed only once a byte after it arrives, as
        # only then is it known not to be the last.
        last_start = (self.header.segments - 1) * size if known else None
        view = memoryview(data)
        while view:
            if len(self._tail) == size:  # full, kept back; more bytes follow, so not the last
                self._seal(bytes(self._tail), last=False)
                self._tail.clear()
            ahead = len(view) > size if last_start is None else self.offset + size <= last_start
            if not self._tail and len(view) >= size and ahead:
                self._seal(view[:size], last=False)
                view = view[size:]
                continue
            take = size - len(self._tail)
            self._tail += view[:take]
            view = view[take:]
            ahead = bool(view) if last_start is None else self.offset <= last_start
            if len(self._tail) == size and ahead:
                self._seal(bytes(self._tail), last=False)
                self._tail.clear()

    def declare_length(self, length: int) -> None:
        """Fix a deferred-length recording's size: the header is rewritten (journaled, so a
        crash mid-write is repaired by `recover_header_journal`) with the size and a new MAC.
        Declaring the same size again is a no-op; another size, or one below the bytes
        already taken, is refused."""
        if self.header.length_known:
            if length != self.header.plaintext_size:
                raise VaultError(
                    f"the length is already {self.header.plaintext_size} bytes", status=400
                )
            return
        if length < self.offset:
            raise VaultError(
                f"length {length} is below the {self.offset} bytes received", status=400
            )
        self.header.core["plaintext_size"] = length
        self.header.mac = self.header.core_mac(self.data_key)
        try:
            journal_header(self.path, self.header.encode())
        except BaseException:
            self.header.core["plaintext_size"] = None
            self.header.mac = self.header.core_mac(self.data_key)
            raise

    def mark(self, hold: bool = False) -> Mark:
        """Remember the current state so a rejected chunk can be undone.

        With `hold`, sealed segments stay in memory until `release()` (the chunk
        may carry at most `hold_limit` bytes, else 413), so a chunk that fails its
        checksum never reaches the disk and its segments can later be sealed
        again with the right bytes.
        """
        self._flush_held()
        self._hashing.drain()
        self._out.settle()
        self._since_mark = {}
        self._held = [] if hold else None
        self._hold_from = self.offset
        return Mark(
            self._out.end,
            bytes(self._tail),
            self._plain.copy(),
            self._stored.copy(),
            self._index,
        )

    def rollback(self, mark: Mark) -> None:
        """Undo everything written since `mark`. If cutting the file back fails, the state is
        still the mark's, but the output is unusable: drop this writer and resume from disk."""
        try:
            self._hashing.drain()
            self._out.truncate(mark.file_length)
        finally:
            self._tail = bytearray(mark.tail)
            # Copies, so the same mark stays valid for a second rollback.
            self._plain, self._stored = mark.plain.copy(), mark.stored.copy()
            self._index = mark.index
            self._held = None  # never written: nothing to retire
            self._retired.update(self._since_mark or {})
            self._since_mark = None

    def release(self) -> None:
        """Write the segments held since `mark(hold=True)`: the chunk was accepted."""
        self._flush_held()
        self._held = None
        self._since_mark = None

    def sync(self) -> None:
        """Make every sealed segment durable (writing any held ones first), and give the
        staging buffers back until more bytes come. If that fails, the state since the mark
        is kept, so that a rollback retires the tags of whatever may have reached the disk."""
        self._flush_held()
        self._out.sync()
        self.release()
        self._out.release()

    def finish(self, destination: Path) -> Summary:
        """Seal the last segment, fsync, and atomically rename the file to its final place.

        Safe to call again after a failure: a failed seal is rolled back (the recording stays
        as it was), and once sealed only the rename and directory syncs are redone.
        """
        if self._summary is None:
            self._seal_last()
        destination = Path(destination)
        if self.path != destination:
            os.replace(self.path, destination)
            self.path, partial_folder = destination, self.path.parent
            if partial_folder != destination.parent:
                fsync_dir(partial_folder)
        fsync_dir(destination.parent)
        self.close()
        return self._summary

    def _seal_last(self) -> None:
        if self.offset != self.header.plaintext_size:
            raise VaultError(
                f"recording incomplete: {self.offset} of {self.header.plaintext_size} bytes",
                status=409,
            )
        mark = self.mark()
        try:
            self._seal(bytes(self._tail), last=True)
            self._tail.clear()
            self._out.sync()
        except BaseException:  # e.g. a full disk: the recording stays resumable as it was
            self.rollback(mark)
            raise
        self.release()
        self._hashing.drain()
        stored = self._stored.hexdigest()
        if self.header.core.get("length_deferred"):  # its header changed after the hash began
            stored = file_sha256(self.path)
        self._summary = Summary(
            evidence_sha256=self._plain.hexdigest(),
            stored_sha256=stored,
            size=self.header.plaintext_size,
            stored_size=self.header.stored_size,
            segments=self._index,
        )

    def plaintext_sha256(self) -> str:
        """SHA-256 of the plaintext accepted so far."""
        self._hashing.drain()
        return self._plain.hexdigest()

    def close(self) -> None:
        """Close the file; an unfinished one stays resumable."""
        self._hashing.close()
        if self._fd >= 0:
            try:
                self._out.close()
            finally:
                os.close(self._fd)
                self._fd = -1


class Reader:
    """Random access to a finished vault file, segment by segment."""

    def __init__(self, path: Path, data_key: bytes, header: Header | None = None):
        self.path = Path(path)
        self.header = header or read_header(self.path)
        self.header.check_mac(data_key)
        self._aead = self.header.cipher(data_key)
        self._aad = self.header.aad
        actual = self.path.stat().st_size
        if actual != self.header.stored_size:
            raise VaultError(_size_problem(self.header, actual))

    def segment(self, index: int) -> bytes:
        """Decrypt and authenticate one segment."""
        header = self.header
        if not 0 <= index < header.segments:
            raise VaultError(f"segment {index} out of range (0..{header.segments - 1})", status=416)
        stride = header.segment_size + TAG
        last = index == header.segments - 1
        size = header.segment_size
        length = header.plaintext_size - index * size if last else size
        with open(self.path, "rb") as handle:
            handle.seek(header.area + index * stride)
            blob = handle.read(length + TAG)
        try:
            return self._aead.decrypt(nonce(index, last), blob, self._aad)
        except InvalidTag:
            raise VaultError(
                f"{self.path.name}: segment {index} fails authentication "
                "(altered, reordered, duplicated or spliced)"
            ) from None

    def read_range(self, start: int, end: int) -> Iterator[bytes]:
        """Yield plaintext bytes [start, end) decrypting only the segments they touch."""
        size = self.header.segment_size
        end = min(end, self.header.plaintext_size)
        position = start
        while position < end:
            index = position // size
            plain = self.segment(index)
            begin = position - index * size
            piece = plain[begin : min(len(plain), end - index * size)]
            yield piece
            position += len(piece)

    def verify(self) -> str:
        """Authenticate every segment and return the evidence SHA-256."""
        digest = hashlib.sha256()
        for index in range(self.header.segments):
            digest.update(self.segment(index))
        return digest.hexdigest()


def _size_problem(header: Header, actual: int) -> str:
    expected = header.stored_size
    if actual < expected:
        return f"file truncated: {actual} of {expected} bytes ({expected - actual} missing)"
    return f"file too long: {actual} bytes, expected {expected} ({actual - expected} extra)"


def check_structure(
    path: Path,
    stored_sha256: str | None = None,
    recording_id: str | None = None,
    size: int | None = None,
) -> list[str]:
    """Check a vault file without any key: header, size and stored-bytes hash, and, when
    given, that its header names `recording_id` and `size` (a file put in the place of
    another recording's shows here). Returns problems."""
    path = Path(path)
    if not path.exists():
        return [f"{path.name}: file missing"]
    try:
        header = read_header(path)
    except VaultError as exc:
        return [exc.message]
    problems = []
    named = header.core.get("recording_id")
    if recording_id is not None and named != recording_id:
        problems.append(f"{path.name}: holds the file of recording {named} (its header says so)")
    if size is not None and header.plaintext_size != size:
        problems.append(
            f"{path.name}: its header declares {header.plaintext_size} bytes, the database {size}"
        )
    actual = path.stat().st_size
    if actual != header.stored_size:
        problems.append(f"{path.name}: {_size_problem(header, actual)}")
    if stored_sha256:
        digest = file_sha256(path)
        if digest != stored_sha256:
            problems.append(
                f"{path.name}: stored bytes changed (sha256 {digest[:16]}..., "
                f"recorded {stored_sha256[:16]}...)"
            )
    return problems


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def header_change(folder: Path) -> Iterator[None]:
    """Hold while reading a recording's state and rewriting its header (seal, re-wrap, shred),
    so two such changes to the files of one vault folder never interleave: across threads and
    processes (an flock on the folder itself, which needs no free space to take)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def planned_header(
    path: Path, stanzas: list[dict], expect: str | None = None, block: int = 1 << 20
) -> tuple[bytes, str]:
    """The header area that gives `path` the key stanzas `stanzas`, and the file's SHA-256
    once it carries it: both known before any change, so the database can hold the new hash
    before the file does (`edgebox.header_changes`). With `expect`, the file's hash as it is
    must be that one: a file that changed since its hash was recorded is refused (409), not
    given a fresh hash that would hide the damage."""
    header = read_header(path)
    header.stanzas = stanzas
    raw = header.encode()
    now, after = hashlib.sha256(), hashlib.sha256(raw)
    with open(path, "rb") as handle:
        now.update(handle.read(len(raw)))
        while chunk := handle.read(block):
            now.update(chunk)
            after.update(chunk)
    if expect is not None and now.hexdigest() != expect:
        raise VaultError(
            f"{Path(path).name}: stored bytes changed since they were recorded (sha256 "
            f"{now.hexdigest()[:16]}..., recorded {expect[:16]}...); the header is left as it is",
            status=409,
        )
    return raw, after.hexdigest()


def rewrite_header(path: Path, stanzas: list[dict]) -> str:
    """Replace the key stanzas rewriting only the header; returns the new file hash.

    The new header is journaled next to the file first, so a crash mid-write is
    repaired by `recover_header_journal`.
    """
    raw, stored = planned_header(path, stanzas)
    journal_header(path, raw)
    return stored


def journal_header(path: Path, raw: bytes) -> None:
    """Replace a file's header area with `raw` (same size), through a journal next to it."""
    journal = path.with_name(path.name + ".header-journal")
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, hashlib.sha256(raw).digest() + raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    _apply_header(path, raw)
    journal.unlink()
    fsync_dir(path.parent)


def _apply_header(path: Path, raw: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, raw, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _whole_header(raw: bytes) -> bool:
    # A journal must hold exactly one header area: anything longer would overwrite segments.
    try:
        return len(raw) == Header.parse(raw, "header journal").area
    except VaultError:
        return False


def recover_header_journal(folder: Path) -> list[Path]:
    """Finish (or discard, if torn) header rewrites cut short by a crash; returns files repaired."""
    repaired = []
    for journal in Path(folder).glob("*.header-journal"):
        target = journal.with_name(journal.name[: -len(".header-journal")])
        data = journal.read_bytes()
        digest, raw = data[:32], data[32:]
        if target.exists() and hashlib.sha256(raw).digest() == digest and _whole_header(raw):
            _apply_header(target, raw)
            repaired.append(target)
        journal.unlink()
    return repaired
