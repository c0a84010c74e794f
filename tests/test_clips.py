"""Camera clips made by real ffmpeg: timing, hashes, codecs, streamability."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from edgebox.clips import decode_errors, ffmpeg_exe, find_font, make_clip, probe_clip

START = dt.datetime(2026, 11, 28, 16, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    return make_clip(path, seconds=3, pre_event_seconds=1, serial="BWC-7", started_at=START)


def test_clip_exists_with_correct_hash_and_times(clip):
    data = clip.path.read_bytes()
    assert clip.size == len(data) > 0
    assert clip.sha256 == hashlib.sha256(data).hexdigest()
    assert clip.duration == pytest.approx(3, abs=0.2)
    assert clip.started_at == START
    assert clip.stopped_at == START + dt.timedelta(seconds=3)
    assert clip.triggered_at == START + dt.timedelta(seconds=1)
    assert not list(clip.path.parent.glob(".*.part")), "no partial file left behind"


def test_clip_decodes_cleanly_as_h264_and_aac(clip):
    assert decode_errors(clip.path) == ""
    probe = probe_clip(clip.path)
    assert probe.video_codecs == ("h264",)
    assert probe.audio_codecs == ("aac",)
    assert probe.duration == pytest.approx(3, abs=0.2)


def test_clip_is_streamable_with_moov_before_mdat(clip):
    head = clip.path.read_bytes()
    assert 0 <= head.find(b"moov") < head.find(b"mdat"), "-movflags +faststart missing"


def test_a_font_is_found_for_the_burnt_in_clock():
    font = find_font()
    assert font is not None and font.suffix == ".ttf"


def test_clip_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="pre_event_seconds"):
        make_clip(tmp_path / "x.mp4", seconds=2, pre_event_seconds=5, started_at=START)
    with pytest.raises(ValueError, match="seconds"):
        make_clip(tmp_path / "x.mp4", seconds=0, started_at=START)
    assert not (tmp_path / "x.mp4").exists()


def test_serial_with_filter_syntax_characters_is_drawn_literally(tmp_path):
    info = make_clip(
        tmp_path / "odd.mp4",
        seconds=1,
        pre_event_seconds=0,
        serial="A:B,'C'[1];50%",
        started_at=START,
        width=160,
        height=90,
        fps=10,
    )
    assert decode_errors(info.path) == ""


def test_ffmpeg_is_found():
    assert ffmpeg_exe()
