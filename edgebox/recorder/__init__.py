"""Cameras the box pulls from over RTSP: registry, pullers, pre-event rings, recordings.

See docs/recorder.md. The service is `edgebox.recorder.service.Recorder`.
"""
