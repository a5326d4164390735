"""The host's side of the boundary: who can read the keys and the trail, token lifetimes, TLS, durability.

Permissions are read with ``stat`` on the files as they are now; a file that does not exist yet is reported as
such (the gateway creates its signing key with mode 0600 on first use). A key or database others can read or
write is a fail: the signing key vouches for every checkpoint, and whoever can write the trail can rewrite it
from any point on and re-sign nothing, but whoever holds the key as well can re-sign it all. Hence also the rule
that the key does not live in the database's directory: one backup, one copy, one mount must not carry both.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterator
from pathlib import Path

from mcp_gateway.config import Settings
from mcp_gateway.doctor.finding import Finding, Status

__all__ = ["database_file", "host_checks", "is_loopback"]

# Token and session lifetimes past these are worth defending to an assessor (warn, not fail).
_LONG_TOKEN = 3600
_LONG_GRANT = 4 * 3600


def database_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL; None for an in-memory SQLite database or any other database."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    name = url.split("///", 1)[1].split("?", 1)[0]
    return None if name in ("", ":memory:") else Path(name)


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address or ``localhost``: a bind nobody off this machine can reach."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _mode_finding(check: str, path: Path, what: str) -> Finding:
    subject = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        return Finding(check, subject, Status.WARN, f"{what} does not exist yet: check again after the first start")
    except OSError as exc:
        return Finding(check, subject, Status.FAIL, f"cannot stat {what}: {exc.strerror or exc}")
    if not stat.S_ISREG(info.st_mode):
        return Finding(check, subject, Status.FAIL, f"{what} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        readers = ", ".join(label for label, bits in (("group", 0o070), ("others", 0o007)) if mode & bits)
        return Finding(
            check, subject, Status.FAIL, f"{what} has mode {mode:04o}: {readers} can read or write it (chmod 600)"
        )
    return Finding(check, subject, Status.PASS, f"{what} has mode {mode:04o}: only its owner (uid {info.st_uid})")


def _key_and_database(settings: Settings) -> Iterator[Finding]:
    key = settings.signing_key_path
    yield _mode_finding("signing key", key, "the checkpoint signing key")
    database = database_file(settings.database_url)
    if database is None:
        kind = settings.database_url.split(":", 1)[0] or "(empty)"
        yield Finding("database", kind, Status.PASS, "not a local file: its permissions are the database server's")
        return
    yield _mode_finding("database", database, "the audit database")
    for suffix in ("-wal", "-shm"):
        sibling = database.with_name(database.name + suffix)
        if sibling.exists():
            yield _mode_finding("database", sibling, f"the database's {suffix[1:]} file")
    key_dir, database_dir = key.resolve().parent, database.resolve().parent
    if key_dir.is_relative_to(database_dir):
        yield Finding(
            "key placement",
            str(key),
            Status.FAIL,
            f"the signing key is in the database's directory {database_dir}: set audit.signing_key elsewhere",
        )
    else:
        yield Finding("key placement", str(key), Status.PASS, f"outside the database's directory {database_dir}")


def _lifetimes(settings: Settings) -> Iterator[Finding]:
    identity = settings.identity
    cap = identity.max_token_lifetime
    if "max_token_lifetime" not in identity.model_fields_set:
        yield Finding(
            "token lifetime",
            "identity.max_token_lifetime",
            Status.FAIL,
            f"not configured (the default {cap} s applies): set the cap your IdP's tokens are held to",
        )
    elif cap > _LONG_TOKEN:
        yield Finding("token lifetime", "identity.max_token_lifetime", Status.WARN, f"{cap} s: longer than an hour")
    else:
        yield Finding("token lifetime", "identity.max_token_lifetime", Status.PASS, f"tokens live at most {cap} s")
    grants = settings.breakglass
    for key, value, long in (
        ("breakglass.max_ttl", grants.max_ttl, _LONG_GRANT),
        ("breakglass.approval_ttl", grants.approval_ttl, _LONG_GRANT),
        ("console.session_idle", settings.console.session_idle, _LONG_TOKEN),
    ):
        status = Status.WARN if value > long else Status.PASS
        yield Finding("lifetime cap", key, status, f"{value} s" + (f": longer than {long} s" if value > long else ""))


def _binds(settings: Settings) -> Iterator[Finding]:
    http = settings.http
    where = f"http {http.host}:{http.port}"
    if http.tls:
        mutual = " with client certificates" if http.tls_client_ca_file is not None else ""
        yield Finding("tls", where, Status.PASS, f"HTTPS{mutual}")
        if http.tls_key_file is not None:  # always, with tls: HttpSettings sets both files or neither
            yield _mode_finding("tls key", http.tls_key_file, "the TLS private key")
    elif is_loopback(http.host):
        yield Finding("tls", where, Status.PASS, "plain HTTP on loopback only")
    else:
        yield Finding(
            "tls",
            where,
            Status.FAIL,
            "plain HTTP on a non-loopback address: set http.tls_cert_file and http.tls_key_file",
        )
    metrics = settings.metrics
    if metrics.enabled and not is_loopback(metrics.host):
        yield Finding(
            "tls",
            f"metrics {metrics.host}:{metrics.port}",
            Status.WARN,
            "/metrics is plain HTTP on a non-loopback address (no subjects or arguments; restrict who reaches it)",
        )


def _durability(settings: Settings) -> Finding:
    level = settings.audit.durability
    if database_file(settings.database_url) is None and settings.database_url.startswith("postgresql"):
        return Finding(
            "durability", "PostgreSQL", Status.PASS, "committed rows follow the server's fsync and synchronous_commit"
        )
    if level == "power":
        return Finding("durability", "audit.durability: power", Status.PASS, "a record survives power loss (fsync)")
    return Finding(
        "durability",
        "audit.durability: process",
        Status.WARN,
        "a record survives the gateway being killed, not power loss: set power if the trail must survive that",
    )


def host_checks(settings: Settings) -> list[Finding]:
    """Key and database permissions and placement, lifetime caps, TLS on non-loopback binds, durability."""
    return [*_key_and_database(settings), *_lifetimes(settings), *_binds(settings), _durability(settings)]
