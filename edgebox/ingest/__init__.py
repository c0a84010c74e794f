"""Camera ingest: pairing and device tokens, and the tus 1.0.0 upload service."""
