"""Replication of the box's database: Litestream's config and supervision (`litestream`,
`config`), the replica's file set as it travels upstream (`fileset`), and the seals a
restored box takes back from central (`restored_seals`)."""
