"""The dashboard's numbers: time-to-drain estimate, remaining bytes, durations, live fragment."""

from __future__ import annotations

import os

from edgebox.web.dashboard import DrainMeter, duration, remaining_bytes
from tests.test_ingest import upload_all
from tests.test_web_auth import PASSWORD
from tests.test_web_pages import form_login


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_drain_estimate_follows_the_shrinking_backlog():
    clock = FakeClock()
    meter = DrainMeter(clock)
    assert meter.observe(100 << 20, online=True)["seconds_left"] is None  # one sample
    clock.now += 5
    assert meter.observe(95 << 20, online=True)["seconds_left"] is None  # under 10 s of samples
    clock.now += 15
    estimate = meter.observe(80 << 20, online=True)  # 20 MiB in 20 s
    assert estimate == {"bytes_per_second": 1 << 20, "seconds_left": 80}
    clock.now += 20
    assert meter.observe(90 << 20, online=True)["bytes_per_second"] == (10 << 20) // 40
    clock.now += 20
    assert meter.observe(200 << 20, online=True)["seconds_left"] is None  # backlog grew
    assert meter.observe(200 << 20, online=False) == {
        "bytes_per_second": None,
        "seconds_left": None,
    }
    assert meter.observe(0, online=False)["seconds_left"] == 0


def test_old_samples_leave_the_window():
    clock = FakeClock()
    meter = DrainMeter(clock)
    meter.observe(1000 << 20, online=True)
    clock.now += 3600  # an hour later the first sample no longer counts
    meter.observe(500 << 20, online=True)
    clock.now += 100
    estimate = meter.observe(400 << 20, online=True)
    assert estimate["bytes_per_second"] == (100 << 20) // 100


def test_remaining_bytes_counts_the_transfer_in_flight():
    upstream = {"backlog": {"bytes": 3000}}
    assert remaining_bytes(upstream, None) == 3000
    assert remaining_bytes(upstream, {"sent": 1000, "size": 2000}) == 2000
    assert remaining_bytes(upstream, {"sent": 9000, "size": 9000}) == 0


def test_durations_read_like_a_person_would_say_them():
    assert [duration(s) for s in (None, 40, 720, 3600, 12000, 3 * 86400)] == [
        "unknown", "40 s", "12 min", "1 h", "3 h 20 min", "3 days",
    ]  # fmt: skip


def test_live_fragment_shows_new_recordings_without_the_page(box, camera):
    box.users.add("crew-1", "crew", PASSWORD)
    client = form_login(box, "crew-1")
    before = client.get(f"{box.url}/dashboard/live")
    assert before.status_code == 200 and "None yet." in before.text
    assert "<html" not in before.text and before.headers["Cache-Control"] == "no-store"
    response, _ = upload_all(camera, os.urandom(300_000))
    after = client.get(f"{box.url}/dashboard/live").text
    assert f'href="/recordings/{response.headers["EdgeBox-Recording-Id"]}"' in after
    assert "1 recording," in after and "Drains when the link returns." in after


def test_an_upload_of_unknown_length_shows_what_came_so_far(box, camera):
    from tests.test_tus_extensions import _create_deferred

    box.users.add("crew-1", "crew", PASSWORD)
    client = form_login(box, "crew-1")
    location = _create_deferred(camera).headers["Location"]
    assert camera.patch(location, 0, os.urandom(300_000)).status_code == 204
    live = client.get(f"{box.url}/dashboard/live").text
    assert "300.0 kB so far; the camera gives the length when it stops." in live
    assert " of 0" not in live and "None B" not in live
