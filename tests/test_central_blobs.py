"""Central's blob stores, the same checks for the local folder and a real SeaweedFS (S3)."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from edgebox.central.blobs import StoreMismatch, StoreUnavailable, open_store
from edgebox.central.blobs.local import LocalBlobs
from edgebox.central.blobs.s3 import S3Blobs
from edgebox.errors import ConfigError
from tests.seaweed import SeaweedFS, s3_store

MIB = 1 << 20


@pytest.fixture(params=["local", "s3"])
def blobs(request, tmp_path, monkeypatch):
    """Each store in turn: a folder, then SeaweedFS under a fresh prefix."""
    if request.param == "local":
        return LocalBlobs(tmp_path / "store")
    server = request.getfixturevalue("seaweed")
    return s3_store(server, f"t-{uuid.uuid4().hex[:8]}", monkeypatch)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_parts_commit_head_get_list_delete(blobs, tmp_path):
    data = os.urandom(11 * MIB + 123)  # three parts of 5 MiB in S3, the last one short
    upload = blobs.begin("boxes/van-1/recordings/r1.ebv", sha(data))
    for start in range(0, len(data), 3 * MIB):
        upload.part(data[start : start + 3 * MIB])
    stat = upload.commit()
    assert (stat.size, stat.sha256) == (len(data), sha(data))
    assert blobs.head("boxes/van-1/recordings/r1.ebv").sha256 == sha(data)
    assert blobs.exists("boxes/van-1/recordings/r1.ebv")
    assert not blobs.exists("boxes/van-1/recordings/r2.ebv")
    assert blobs.get("boxes/van-1/recordings/r1.ebv") == data
    blobs.put("boxes/van-1/recordings/r1.manifest.json", b'{"a": 1}')
    blobs.put("boxes/van-2/recordings/r9.ebv", b"x")
    assert list(blobs.list("boxes/van-1/")) == [
        "boxes/van-1/recordings/r1.ebv",
        "boxes/van-1/recordings/r1.manifest.json",
    ]
    out = tmp_path / "copy"
    blobs.download("boxes/van-1/recordings/r1.ebv", out)
    assert out.read_bytes() == data
    blobs.delete("boxes/van-1/recordings/r1.ebv")
    assert blobs.head("boxes/van-1/recordings/r1.ebv") is None
    with pytest.raises(FileNotFoundError):
        blobs.get("boxes/van-1/recordings/r1.ebv")


def test_keep_takes_a_checked_file(blobs, tmp_path):
    data = os.urandom(6 * MIB + 5)
    source = tmp_path / "data"
    source.write_bytes(data)
    stat = blobs.keep("boxes/b/recordings/k.ebv", source, sha(data), len(data))
    assert stat.size == len(data)
    assert blobs.get("boxes/b/recordings/k.ebv") == data


def test_wrong_declared_hash_is_refused_and_nothing_is_visible(blobs):
    upload = blobs.begin("boxes/b/recordings/bad.ebv", "0" * 64)
    upload.part(os.urandom(6 * MIB))
    with pytest.raises(StoreMismatch):
        upload.commit()
    assert blobs.head("boxes/b/recordings/bad.ebv") is None
    assert list(blobs.list("boxes/b/")) == []


def test_unsafe_keys_are_refused(blobs):
    for key in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            blobs.put(key, b"x")


def test_a_part_damaged_on_the_way_is_refused_by_the_store(seaweed, monkeypatch):
    blobs = s3_store(seaweed, f"t-{uuid.uuid4().hex[:8]}", monkeypatch)
    upload = blobs.begin("boxes/b/recordings/torn.ebv")
    upload.part(os.urandom(5 * MIB))  # the first part goes: a multipart upload is open
    client = blobs.client
    original = client.upload_part

    def damaged(**kwargs):  # the bytes change between the checksum and the wire
        kwargs["Body"] = kwargs["Body"][:-1] + b"\x00"
        return original(**kwargs)

    monkeypatch.setattr(client, "upload_part", damaged)
    with pytest.raises(StoreUnavailable, match="BadDigest"):
        upload.part(os.urandom(5 * MIB))
    assert blobs.head("boxes/b/recordings/torn.ebv") is None


def test_a_store_that_is_down_gets_a_clear_error(tmp_path, monkeypatch):
    server = SeaweedFS(tmp_path / "never-started")  # ports chosen, nothing listening
    blobs = s3_store(server, "x", monkeypatch)
    with pytest.raises(StoreUnavailable, match=r"object store s3://evidence/x: a/b"):
        blobs.put("a/b", b"data")


def test_open_store_reads_the_url(tmp_path):
    assert isinstance(open_store(tmp_path), LocalBlobs)
    s3 = open_store("s3://bucket/some/prefix")
    assert isinstance(s3, S3Blobs) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    with pytest.raises(ConfigError, match="unknown store"):
        open_store("ftp://x/y")
    with pytest.raises(ConfigError, match="no bucket"):
        open_store("s3://")
