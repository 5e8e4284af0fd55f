"""Where the data lives: sources read by the trusted server, snapshotted into immutable dataset versions.

`config` says where a dataset's rows are (the `source` table of `server.toml`); `sources` reads them;
`snapshots` writes one content-hashed Parquet file per version; `versions` is the registry of versions;
`refresh` ties them together, records failures, and runs on a schedule. Workers read snapshots only.
"""
