"""A real PostgreSQL server for tests and benchmarks: the binaries the `pgserver` wheel ships (in the dev
extra, so `pip install -e ".[dev]"` brings them), else Debian's `postgresql` package; `initdb` into a
temporary folder, listening on a free loopback port, with password (SCRAM) authentication.

PostgreSQL refuses to run as root, so under root (CI, these machines) every server command runs as the
`postgres` user the package creates (or `nobody`), in a folder made for it outside pytest's private
temporary tree; binaries that user cannot reach (a virtual environment in a private folder) are copied
once per process to a folder it can.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyarrow as pa

from remote_magic_server.demo import free_port

OWNER = "owner"
INSTALL = "PostgreSQL is not installed: pip install pgserver (Python <= 3.12), or apt-get install postgresql"


def bindir() -> Path | None:
    """The bin folder of the `pgserver` wheel's PostgreSQL, else of Debian's newest, else None."""
    spec = importlib.util.find_spec("pgserver")
    for location in (spec and spec.submodule_search_locations) or []:
        if (Path(location) / "pginstall" / "bin" / "initdb").exists():
            return Path(location) / "pginstall" / "bin"
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


_copies: dict[Path, Path] = {}


def _reachable(tools: Path, prefix: list[str]) -> Path:
    """`tools`, or a copy of its installation that the user in `prefix` can run."""
    if not prefix or subprocess.run([*prefix, "test", "-x", str(tools / "initdb")]).returncode == 0:
        return tools
    if tools not in _copies:
        shared = Path(tempfile.mkdtemp(prefix="remote-magic-pgbin-"))
        shared.chmod(0o755)
        atexit.register(shutil.rmtree, shared, True)
        # Keep the layout around the install: a wheel's binaries find their libraries by a relative RPATH
        # (pgserver: $ORIGIN/../../../pgserver.libs).
        package = tools.parents[1]
        shutil.copytree(package, shared / package.name, symlinks=True)
        libs = package.with_name(package.name + ".libs")
        if libs.is_dir():
            shutil.copytree(libs, shared / libs.name, symlinks=True)
        _copies[tools] = shared / tools.relative_to(package.parent)
    return _copies[tools]


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"]
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


class PostgresServer:
    """One cluster; `start`/`stop` may be repeated (the data stays), `close` removes everything."""

    def __init__(self, password: str = "pg-test-secret-7d3f"):
        tools = bindir()
        if tools is None:
            raise RuntimeError(INSTALL)
        self.password = password
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="remote-magic-pg-"))
        self.data = self.root / "data"
        self.prefix = _run_as()
        self.bin = _reachable(tools, self.prefix)
        if self.prefix:
            user = pwd.getpwnam(self.prefix[2])
            os.chown(self.root, user.pw_uid, user.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(password)
        if self.prefix:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._pg(
            "initdb", "-D", self.data, "-U", OWNER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()

    def _pg(self, tool: str, *args: object) -> None:
        subprocess.run(
            [*self.prefix, str(self.bin / tool), *map(str, args)],
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    def start(self) -> PostgresServer:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._pg("pg_ctl", "start", "-w", "-D", self.data, "-l", self.root / "log", "-o", options)
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends sessions cleanly; `immediate` is a crash: connections drop mid-query."""
        self._pg("pg_ctl", "stop", "-w", "-D", self.data, "-m", mode)

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def uri(self, password: str | None = None, dbname: str = "postgres") -> str:
        return f"postgresql://{OWNER}:{password or self.password}@127.0.0.1:{self.port}/{dbname}"

    def execute(self, *statements: str) -> list[tuple]:
        """Run statements as the owner (autocommit); return the last one's rows, if it has any."""
        import adbc_driver_postgresql.dbapi as pg

        rows: list[tuple] = []
        with pg.connect(self.uri(), autocommit=True) as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = cur.fetchall() if cur.description else []
        return rows

    def load(self, table: str, data: pa.Table) -> None:
        """Replace `table` with these rows (ADBC bulk ingest: binary COPY)."""
        import adbc_driver_postgresql.dbapi as pg

        with pg.connect(self.uri(), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS "{table}"')
            cur.adbc_ingest(table, data, mode="create")
