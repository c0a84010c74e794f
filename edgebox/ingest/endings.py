"""How uploads end other than by finishing: failed, abandoned, terminated by the camera,
expired when idle, and what a restart finds (finished in the vault before a crash, resumable,
or lost). A part of `Uploads` (its state: the store, the open writers, the paths)."""

from __future__ import annotations

import datetime as dt

from edgebox import custody, vault
from edgebox.clock import iso, utcnow
from edgebox.errors import IngestError
from edgebox.ingest.wire import FINAL


class UploadEndings:
    """The ends of an upload, mixed into `Uploads`."""

    def _discard_files(self, upload_id: str) -> None:
        with self._registry:
            active = self._active.pop(upload_id, None)
        if active is not None:
            active.writer.close()
        self.partial_path(upload_id).unlink(missing_ok=True)
        self._resume_path(upload_id).unlink(missing_ok=True)

    def _end(self, row: dict, state: str, actor: str, event: str, error: str | None) -> None:
        """Move a receiving upload to `state` and drop its files; an upload that finished or
        ended meanwhile (another request won the race) is left as it is: 403 or 410."""
        with self.store.write() as db:
            changed = db.execute(
                "UPDATE uploads SET state = ?, error = ?, updated_at = ? "
                "WHERE id = ? AND state = 'receiving'",
                [state, error, iso(), row["id"]],
            ).rowcount
            if changed:
                custody.append(
                    db, event, actor, row["recording_id"], {"upload_id": row["id"], "reason": error}
                )
        if not changed:
            now = self.store.one("SELECT * FROM uploads WHERE id = ?", (row["id"],))
            if now["state"] == "finished":
                raise IngestError("a finished recording cannot be deleted", status=403)
            raise self._gone(now)
        self._discard_files(row["id"])

    def _fail(self, row: dict, device: dict, reason: str) -> None:
        self._end(row, "failed", f"device:{device['id']}", "upload.failed", reason)

    def abandon(self, upload_id: str, device: dict, reason: str) -> None:
        """Discard an unfinished upload its source will never resume (an interrupted
        all-or-nothing request); a finished or already ended one is left as it is."""
        row = self._row(upload_id, device)
        if row["state"] == "receiving":
            self._fail(row, device, reason)

    def terminate(self, upload_id: str, device: dict) -> None:
        """tus termination: discard an unfinished upload; finished recordings are never deleted."""
        row = self._row(upload_id, device)
        if row["state"] == "finished":
            raise IngestError("a finished recording cannot be deleted by a camera", status=403)
        if row["state"] != "receiving":
            raise self._gone(row)
        active = self._active.get(upload_id)
        if active is not None and not active.lock.acquire(blocking=False):
            raise IngestError("upload is being written; try again", status=409)
        try:
            self._end(
                row,
                "terminated",
                f"device:{device['id']}",
                "upload.terminated",
                "terminated by the camera",
            )
        finally:
            if active is not None:
                active.lock.release()

    def expire(self, now: dt.datetime | None = None) -> list[str]:
        """Drop unfinished uploads idle past their expiry; returns their ids."""
        cutoff = iso(now or utcnow())
        expired = []
        for row in self.store.query(
            "SELECT * FROM uploads WHERE state = 'receiving' AND expires_at < ?", (cutoff,)
        ):
            active = self._active.get(row["id"])
            if active is not None and not active.lock.acquire(blocking=False):
                continue
            try:
                self._end(row, "expired", "box", "upload.expired", "idle past its expiry")
                expired.append(row["id"])
            except IngestError:  # finished or ended since the query: left as it is
                pass
            finally:
                if active is not None:
                    active.lock.release()
        return expired

    def recover(self) -> dict:
        """At start: finish uploads renamed into the vault before a crash; fail lost ones."""
        report = {"completed": [], "lost": [], "resumable": [], "swept": self._sweep()}
        vault.recover_header_journal(self.partial_dir)  # a length declared as the box died
        for row in self.store.query("SELECT * FROM uploads WHERE state = 'receiving'"):
            final = self.vault_path(row["recording_id"])
            device = {"id": row["device_id"]}
            if row["concat"] == FINAL and not final.exists():  # joined only within a request
                self._fail(row, device, "joining the parts was cut short; send the final again")
                report["lost"].append(row["id"])
            elif self.partial_path(row["id"]).exists() and self._resume_path(row["id"]).exists():
                report["resumable"].append(row["id"])
            elif final.exists() and self._resume_path(row["id"]).exists():
                reader = vault.Reader(final, self._load_resume_key(row["id"]))
                summary = vault.Summary(
                    reader.verify(),
                    vault.file_sha256(final),
                    reader.header.plaintext_size,
                    reader.header.stored_size,
                    reader.header.segments,
                )
                try:
                    self._record(row, device, summary)
                except IngestError as exc:  # a final whose parts ended: not a recording
                    self._fail(row, device, exc.message)
                    final.unlink()
                    report["lost"].append(row["id"])
                    continue
                self._resume_path(row["id"]).unlink()
                report["completed"].append(row["id"])
            else:
                self._fail(row, device, "upload files lost before completion")
                report["lost"].append(row["id"])
        vault.recover_header_journal(self.vault_dir)
        return report

    def _sweep(self) -> list[str]:
        """Remove upload files that no receiving upload owns: those of a creation that crashed
        before its row was written (never acknowledged, so never written to), and resume keys
        left by a crash between a recording's commit and their deletion (they would open a
        finished recording). Returns the file names removed."""
        states = {r["id"]: r["state"] for r in self.store.query("SELECT id, state FROM uploads")}
        swept = []
        for path in sorted(self.partial_dir.iterdir()):
            if path.suffix in (".partial", ".resume") and states.get(path.stem) != "receiving":
                path.unlink(missing_ok=True)
                swept.append(path.name)
        return swept
