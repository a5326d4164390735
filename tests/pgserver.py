"""A throwaway PostgreSQL server from Debian's packages, on 127.0.0.1: for the test fixtures and the benchmarks.

``initdb`` into a temporary folder (as the postgres user when run as root), ``pg_ctl start`` on a free port, one
database named ``gateway``; :func:`postgres_server` stops it and removes the folder at the end of the block.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["create_database", "drop_database", "postgres_bin", "postgres_server"]


def postgres_bin() -> Path | None:
    """The folder of the newest installed server's binaries, or None when no server is installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_server(bindir: Path, *, max_connections: int = 100) -> Iterator[str]:
    """Start a server; yields the SQLAlchemy URL of its ``gateway`` database."""
    # Not under pytest's tmp folder: that is private to root, and the server runs as the postgres user.
    data = Path(tempfile.mkdtemp(prefix="mcp-gateway-pg-"))
    port = _free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(data, "postgres")
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data}"
    options += f" -c max_connections={max_connections}"
    pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data / "db")]
    subprocess.run([*pg_ctl, "-w", "-l", str(data / "log"), "-o", options, "start"], check=True, capture_output=True)
    try:
        subprocess.run(
            [*as_postgres, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "gateway"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/gateway"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], check=False, capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def create_database(server_url: str) -> str:
    """A new, empty database on the server of ``server_url``; returns its URL."""
    import sqlalchemy

    name = f"t_{secrets.token_hex(6)}"
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(server_url: str, url: str) -> None:
    """Drop the database of ``url`` (made by :func:`create_database`), closing whatever is still connected."""
    import sqlalchemy

    name = url.rsplit("/", 1)[1]
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()
