"""Where the data lives: sources read by the trusted server, snapshotted into immutable dataset versions.

`config` says where a dataset's rows are (the `source` table of `server.toml`); `source` is the seam,
with one implementation per kind (`files`, `postgres`, `s3`) chosen in `sources`; `snapshots` writes one
content-hashed Parquet file per version (`parquet`); `versions` is the registry of versions;
`lifecycle` refreshes and prunes, `schedule` runs refreshes inside the server. Workers read snapshots
only.
"""
