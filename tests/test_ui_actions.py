"""What the new pages do, over real HTTPS: pictures only for an unlocked supervisor and each
look in custody; supervisors' bulk actions change and log each recording on its own; tags
from the configured choices; the "today / this shift / last 24 h" ranges; the picture cache
stays within its bound."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from edgebox import catalog, pictures
from edgebox.clips import ffmpeg_exe, make_clip
from edgebox.web import periods
from tests.conftest import SECRET
from tests.test_ingest import upload_all
from tests.test_web_auth import PASSWORD
from tests.test_web_pages import form_login, token


@pytest.fixture
def site(box, camera, tmp_path):
    """A box with one user per role, one real clip and one recording of random bytes."""
    for role in ("crew", "supervisor", "admin"):
        box.users.add(f"{role}-1", role, PASSWORD)
    clip = make_clip(tmp_path / "c.mp4", seconds=6, pre_event_seconds=2,
                     started_at=dt.datetime.now(dt.UTC))  # fmt: skip
    meta = {"started_at": clip.started_at.isoformat(), "stopped_at": clip.stopped_at.isoformat(),
            "pre_event_seconds": 2}  # fmt: skip
    real, _ = upload_all(camera, clip.path.read_bytes(), metadata=meta)
    noise, _ = upload_all(camera, os.urandom(200_000))
    return box, real.headers["EdgeBox-Recording-Id"], noise.headers["EdgeBox-Recording-Id"]


def _unlock(box, client, page_text: str) -> None:
    answer = client.post(
        f"{box.url}/review/unlock", data={"secret": SECRET, "csrf_token": token(page_text)}
    )
    assert answer.status_code == 200


def _looks(box, rid: str) -> list[str]:
    return [
        r["details"]
        for r in box.store.query(
            "SELECT details FROM custody WHERE event = 'recording.viewed' AND subject = ?", (rid,)
        )
    ]


def test_pictures_only_for_an_unlocked_supervisor_each_look_logged_once(site):
    box, rid, noise = site
    url = f"{box.url}/api/v1/recordings/{rid}/poster.jpg"
    assert form_login(box, "crew-1").get(url).status_code == 403
    supervisor = form_login(box, "supervisor-1")
    locked = supervisor.get(url)
    assert locked.status_code == 403 and locked.json()["error"] == "KeyAccessError"
    assert _looks(box, rid) == []
    _unlock(box, supervisor, supervisor.get(f"{box.url}/recordings").text)
    for kind in ("poster", "strip", "poster"):
        answer = supervisor.get(f"{box.url}/api/v1/recordings/{rid}/{kind}.jpg")
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/jpeg"
        assert (
            answer.content.startswith(b"\xff\xd8") and "no-store" in answer.headers["Cache-Control"]
        )
    assert sorted(_looks(box, rid)) == ['{"picture":"poster"}', '{"picture":"strip"}']
    # Bytes that are no video: a precise 422, nothing logged, nothing cached.
    bad = supervisor.get(f"{box.url}/api/v1/recordings/{noise}/poster.jpg")
    assert bad.status_code == 422 and bad.json()["error"] == "NoPicture"
    assert _looks(box, noise) == []
    assert supervisor.get(f"{box.url}/api/v1/recordings/nope/poster.jpg").status_code == 404
    assert supervisor.get(f"{box.url}/api/v1/recordings/{rid}/frame.jpg").status_code == 404
    spec = supervisor.get(f"{box.url}/api/openapi.json").json()["paths"]
    for kind in ("poster", "strip"):
        assert "get" in spec[f"/api/v1/recordings/{{recording_id}}/{kind}.jpg"]


def test_bulk_actions_change_and_log_each_recording(site):
    box, rid, noise = site
    assert form_login(box, "crew-1").post(f"{box.url}/recordings/bulk").status_code == 403
    supervisor = form_login(box, "supervisor-1")
    csrf = token(supervisor.get(f"{box.url}/recordings").text)
    both = {"recording": [rid, noise], "csrf_token": csrf}
    page = supervisor.post(
        f"{box.url}/recordings/bulk", data={**both, "action": "incident", "incident": "INC-7"}
    )
    assert "2 of 2 recordings changed" in page.text
    rows = box.store.query("SELECT incident FROM recordings ORDER BY id")
    assert [r["incident"] for r in rows] == ["INC-7", "INC-7"]
    tagged = box.store.query("SELECT subject FROM custody WHERE event = 'recording.tagged'")
    assert sorted(r["subject"] for r in tagged) == sorted([rid, noise])
    # A hold without a reason: refused for each, nothing changes.
    page = supervisor.post(f"{box.url}/recordings/bulk", data={**both, "action": "place"})
    assert "0 of 2 recordings changed" in page.text and "give a reason" in page.text
    assert box.store.one("SELECT SUM(legal_hold) AS n FROM recordings")["n"] == 0
    page = supervisor.post(
        f"{box.url}/recordings/bulk", data={**both, "action": "place", "reason": "court order 12"}
    )
    assert "2 of 2 recordings changed" in page.text
    placed = box.store.query("SELECT subject FROM custody WHERE event = 'recording.hold_placed'")
    assert len(placed) == 2
    page = supervisor.post(
        f"{box.url}/recordings/bulk",
        data={"recording": [rid], "action": "lift", "reason": "case closed", "csrf_token": csrf},
    )
    assert "1 of 1 recordings changed" in page.text
    held = box.store.query("SELECT id FROM recordings WHERE legal_hold = 1")
    assert [r["id"] for r in held] == [noise]
    page = supervisor.post(f"{box.url}/recordings/bulk", data={"action": "x", "csrf_token": csrf})
    assert "choose recordings and an action" in page.text


def test_tags_use_the_configured_choices(site):
    box, rid, _ = site
    crew = form_login(box, "crew-1")
    page = crew.get(f"{box.url}/recordings/{rid}")
    assert "severity of the intervention" in page.text and "not given" in page.text
    assert "? s" not in page.text and "? / ?" not in page.text
    form = {"csrf_token": token(page.text), "incident": "INC-9", "warned": "no"}
    missing_note = crew.post(
        f"{box.url}/recordings/{rid}/tags", data={**form, "exemption": "other"}
    )
    assert "say why in a note" in missing_note.text
    assert box.store.one("SELECT incident FROM recordings WHERE id = ?", (rid,))["incident"] is None
    unknown = crew.post(f"{box.url}/recordings/{rid}/tags", data={**form, "exemption": "bored"})
    assert "choose a reason from the list" in unknown.text
    saved = crew.post(
        f"{box.url}/recordings/{rid}/tags",
        data={**form, "exemption": "other", "exemption_note": "child present"},
    )
    assert "tags saved" in saved.text and "other: child present" in saved.text
    row = box.store.one("SELECT warned, exemption FROM recordings WHERE id = ?", (rid,))
    assert (row["warned"], row["exemption"]) == (0, "other: child present")
    crew.post(f"{box.url}/recordings/{rid}/tags",
              data={**form, "exemption": "large_group"})  # fmt: skip
    row = box.store.one("SELECT exemption FROM recordings WHERE id = ?", (rid,))
    assert row["exemption"] == "large_group"
    assert "large group" in crew.get(f"{box.url}/recordings/{rid}").text


def test_time_presets_in_the_crews_time_zone():
    ui = SimpleNamespace(timezone="Europe/Brussels", shift_start="07:00", shift_hours=12)
    night = dt.datetime(2026, 12, 6, 2, 30, tzinfo=dt.UTC)  # 03:30 in Brussels
    assert periods.preset("shift", ui, night)[0] == "2026-12-05T18:00:00Z"  # 19:00 local
    assert periods.preset("today", ui, night)[0] == "2026-12-05T23:00:00Z"
    assert periods.preset("24h", ui, night)[0] == "2026-12-05T02:30:00Z"
    day = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)  # 14:00 in summer time
    assert periods.preset("shift", ui, day)[0] == "2026-07-01T05:00:00Z"
    assert periods.day_range("2026-12-06", "19:00", "07:00", ui) == (
        "2026-12-06T18:00:00Z", "2026-12-07T06:00:00Z",
    )  # fmt: skip


def test_time_filters_on_the_page_and_bad_ones(site):
    box, rid, noise = site
    crew = form_login(box, "crew-1")
    shown = crew.get(f"{box.url}/recordings?range=24h").text
    assert rid in shown  # the clip started just now; the noise has no start time
    started = box.store.one("SELECT started_at FROM recordings WHERE id = ?", (rid,))["started_at"]
    zone = ZoneInfo(box.config.ui.timezone)  # the day is the crews' day, not UTC's
    day = dt.datetime.fromisoformat(started).astimezone(zone).date().isoformat()
    assert rid in crew.get(f"{box.url}/recordings?day={day}").text
    assert rid not in crew.get(f"{box.url}/recordings?day=2001-01-01").text
    bad = crew.get(f"{box.url}/recordings?day=yesterday")
    assert bad.status_code == 200 and "give the day as a date" in bad.text
    assert "unknown time range" in crew.get(f"{box.url}/recordings?range=week").text


def test_picture_cache_keeps_within_its_bound():
    cache = pictures.PictureCache(max_bytes=250)
    made = []
    for key in "abcd":
        cache.get((key,), lambda k=key: made.append(k) or k.encode() * 100)
    assert cache.held() <= 250 and made == list("abcd")
    cache.get(("d",), lambda: made.append("again") or b"")
    assert made[-1] == "d"  # held: not made again
    cache.get(("a",), lambda: made.append("a2") or b"a" * 100)
    assert made[-1] == "a2"  # dropped first, made again


def test_a_file_without_its_index_first_gets_no_picture(tmp_path):
    """ffmpeg reads the pipe front to back: an MP4 whose moov follows the media cannot be
    drawn, and says so instead of writing anything anywhere."""
    clip = make_clip(tmp_path / "c.mp4", seconds=2, pre_event_seconds=0,
                     started_at=dt.datetime.now(dt.UTC))  # fmt: skip
    late = tmp_path / "late.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(clip.path), "-c", "copy", str(late)],
                   check=True)  # fmt: skip
    for path, ok in ((clip.path, True), (late, False)):
        data = path.read_bytes()
        reader = SimpleNamespace(
            header=SimpleNamespace(plaintext_size=len(data)),
            read_range=lambda start, end, d=data: iter([d[start:end]]),
        )
        if ok:
            assert pictures.poster(reader, 1).startswith(b"\xff\xd8")
        else:
            with pytest.raises(pictures.NoPicture):
                pictures.poster(reader, 1)


def test_the_recordings_of_one_incident_side_by_side(box, camera):
    box.users.add("crew-1", "crew", PASSWORD)
    base = dt.datetime(2026, 12, 6, 20, 0, tzinfo=dt.UTC)
    ids = []
    for offset, length in ((0, 600), (300, 120), (None, None)):
        meta = {} if offset is None else {
            "started_at": (base + dt.timedelta(seconds=offset)).isoformat(),
            "stopped_at": (base + dt.timedelta(seconds=offset + length)).isoformat()}  # fmt: skip
        response, _ = upload_all(camera, os.urandom(50_000), metadata=meta)
        ids.append(response.headers["EdgeBox-Recording-Id"])
    crew = form_login(box, "crew-1")
    alone = crew.get(f"{box.url}/recordings/{ids[0]}").text
    assert 'class="timeline"' not in alone  # no incident yet
    for rid in ids:
        catalog.tag(box.store, rid, {"incident": "INC-5"}, "user:crew-1")
    page = crew.get(f"{box.url}/recordings/{ids[1]}").text
    assert 'class="timeline"' in page
    bars = re.findall(r'class="bar" x="(\d+)" y="0" width="(\d+)"', page)
    assert bars == [("0", "1000"), ("500", "200")]
    assert page.count('aria-current="page"') == 2  # the nav link and this recording's lane
    assert "1 recording without times is not shown" in page
