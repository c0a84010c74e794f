"""Low-level file, memory and socket helpers: O_DIRECT writes and hashing (`direct_io`,
`direct_append`), atomic and private files (`durable`), TLS record reading (`tls_records`),
the allocator's tuning (`allocator`) and process signals (`signals`)."""
