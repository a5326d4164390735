"""Where a configuration version came from: which files changed, line by line, and what git says about them.

Security teams change policy and catalogs by editing the files (often in a git work tree) rather than through
the CLI. When a reload picks such an edit up, its audit record carries :func:`file_changes` (per changed file:
the SHA-256 before and after and a unified diff of its lines, bounded) and :func:`git_state` (when the folder
is in a git work tree: the HEAD commit, its author and committer, and whether each changed file matches HEAD,
so an uncommitted hand edit is never passed off as the last commit's author's).

git runs with a fixed argv, a timeout and no network, only for commands that run no repository-configured
program (``rev-parse``, ``log``, ``ls-tree``; never ``status`` or ``diff``, which may run filters, ``fsmonitor``
or ``textconv`` named in ``.git/config``): whether a file matches HEAD is decided by hashing it here as git
would (``blob <size>\\0<bytes>``), not by asking git to read the work tree.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GIT_TIMEOUT",
    "MAX_DIFF_LINES",
    "REDACTED",
    "FolderFiles",
    "file_changes",
    "git_state",
    "redact_urls",
    "redact_yaml_lines",
    "secret_key",
]

GIT_TIMEOUT = 5.0  # seconds per git command; a hung git must not hold a reload
MAX_DIFF_LINES = 400  # diff lines per record, all files together; the rest are counted, not kept
_MAX_LINE = 1000  # characters kept of one diff line
_MAX_FILE_BYTES = 4 * 1024 * 1024  # bigger files are digested but not diffed

# Key names whose values are credentials: any part (split on _ - .) naming a secret, or a last part naming a
# key, token or credential. ``max_token_bytes`` is not one; ``api_key``, ``client_secret``, ``password`` are.
_SECRET_PARTS = frozenset({"password", "passwd", "secret", "passphrase"})
_SECRET_LAST = frozenset({"token", "key", "apikey", "credential", "credentials", "auth", "authorization", "pwd"})
_KEY_LINE = re.compile(r"^(?P<lead>\s*(?:-\s+)?)(?P<key>[\"']?[A-Za-z0-9_.-]+[\"']?)\s*:(?P<rest>.*)$")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@")
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class FolderFiles:
    """The bytes of a folder's configuration files (matched by name patterns), read at one moment."""

    files: Mapping[str, bytes]

    @classmethod
    def read(cls, folder: Path, patterns: Iterable[str]) -> FolderFiles:
        """Read every file in ``folder`` whose name matches one of ``patterns``; an unreadable one is left out.

        An unreadable file is also a change the reload reports (the loader refuses it); leaving it out here
        makes it show as removed in the diff, rather than failing the record.
        """
        files: dict[str, bytes] = {}
        for pattern in patterns:
            for path in folder.glob(pattern):
                try:
                    files[path.name] = path.read_bytes()
                except OSError:
                    continue
        return cls(dict(sorted(files.items())))


def _sha256(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def _lines(data: bytes | None) -> list[str]:
    if data is None:
        return []
    return data.decode("utf-8", errors="backslashreplace").splitlines()


def file_changes(
    old: FolderFiles, new: FolderFiles, redact: Callable[[list[str]], list[str]] | None = None
) -> dict[str, Any]:
    """Per changed file: its digests before and after, whether it was added, removed or modified, and its diff.

    The diffs are unified, with one line of context, ``redact`` applied to both sides first; together they keep at
    most :data:`MAX_DIFF_LINES` lines (``omitted_lines`` counts the rest).
    """
    changed: list[dict[str, Any]] = []
    budget, omitted = MAX_DIFF_LINES, 0
    for name in sorted(set(old.files) | set(new.files)):
        before, after = old.files.get(name), new.files.get(name)
        if before == after:
            continue
        status = "added" if before is None else "removed" if after is None else "modified"
        entry: dict[str, Any] = {"file": name, "status": status, "old_sha256": _sha256(before)}
        entry["new_sha256"] = _sha256(after)
        if max(len(before or b""), len(after or b"")) > _MAX_FILE_BYTES:
            entry["diff"], entry["diff_omitted"] = [], "file too large to diff"
            changed.append(entry)
            continue
        old_lines, new_lines = _lines(before), _lines(after)
        if redact is not None:
            old_lines, new_lines = redact(old_lines), redact(new_lines)
        diff = [line[:_MAX_LINE] for line in difflib.unified_diff(old_lines, new_lines, "a/" + name, "b/" + name, n=1)]
        diff = [line.rstrip("\n") for line in diff]
        kept = diff[:budget]
        omitted += len(diff) - len(kept)
        budget -= len(kept)
        entry["diff"] = kept
        changed.append(entry)
    return {"files": changed, "omitted_lines": omitted}


def secret_key(key: str) -> bool:
    """Whether a configuration key's name says its value is a credential."""
    parts = [part for part in re.split(r"[_.\-]", key.strip("\"'").lower()) if part]
    return bool(parts) and (any(part in _SECRET_PARTS for part in parts) or parts[-1] in _SECRET_LAST)


def redact_urls(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL replaced by ``[redacted]``."""
    return _USERINFO.sub(lambda match: f"{match['scheme']}{match['user']}:{REDACTED}@", text)


def redact_yaml_lines(lines: list[str]) -> list[str]:
    """YAML lines with credential-looking keys' values (and any block nested under them) and the passwords in
    URLs (``scheme://user:password@``) replaced by ``[redacted]``.

    Line-based on purpose: it also redacts a file that is not valid YAML, and keeps the lines a diff compares.
    """
    redacted: list[str] = []
    hidden_below: int | None = None  # indentation of a secret key whose nested block is being hidden
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if hidden_below is not None:
            if not line.strip() or indent > hidden_below:
                redacted.append(" " * indent + REDACTED if line.strip() else line)
                continue
            hidden_below = None
        line = redact_urls(line)
        found = _KEY_LINE.match(line)
        if found is not None and secret_key(found["key"]):
            value = found["rest"].strip()
            if not value or value[0] in "|>":  # the secret is the block that follows
                hidden_below = len(found["lead"])
            line = f"{found['lead']}{found['key']}: {REDACTED}"
        redacted.append(line)
    return redacted


def _git_blob_id(data: bytes) -> str:
    # As `git hash-object` computes it (SHA-1 repositories; a SHA-256 repository simply never matches).
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _git(executable: str, folder: Path, *args: str) -> str:
    """Run one read-only git command in ``folder``; its stdout.

    Raises:
        OSError: git could not be run, failed, or timed out; the message is git's own first line.
    """
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    # Literal pathspecs: a file named ":(top)x.csv" is a file name, not pathspec magic.
    command = [executable, "--no-pager", "--literal-pathspecs", "-c", "core.fsmonitor=false", "-C", str(folder), *args]
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argv (no shell); the folder is the configured one
            command, capture_output=True, timeout=GIT_TIMEOUT, check=False, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"git {args[0]} timed out after {GIT_TIMEOUT:g} s") from exc
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise OSError(f"git {args[0]}: {message[0] if message else f'exit status {done.returncode}'}")
    return done.stdout.decode("utf-8", errors="replace")


def git_state(folder: Path, files: Mapping[str, bytes | None] | None = None) -> dict[str, Any]:
    """What git says about ``folder``: ``{"work_tree": false}``, or its HEAD commit id, author and committer, and
    which of ``files`` (name to current bytes, ``None`` for a removed file) differ from HEAD (``uncommitted``);
    ``{"error": ...}`` when git is missing or fails. Never raises: the record of a change must not depend on
    git."""
    executable = shutil.which("git")
    if executable is None:
        return {"available": False, "error": "git not found on PATH"}
    try:
        if _git(executable, folder, "rev-parse", "--is-inside-work-tree").strip() != "true":
            return {"work_tree": False}
    except OSError as exc:
        if "not a git repository" in str(exc):
            return {"work_tree": False}
        return {"work_tree": None, "error": str(exc)}
    state: dict[str, Any] = {"work_tree": True}
    try:
        fields = _git(
            executable, folder, "log", "-1", "--no-show-signature", "--format=%H%x00%an <%ae>%x00%aI%x00%cn <%ce>"
        )
    except OSError as exc:
        # A fresh repository has no HEAD yet: every file is uncommitted.
        state.update(commit=None, note=str(exc))
        if files is not None:
            state["uncommitted"] = sorted(files)
        return state
    commit, author, authored, committer = [*fields.strip().split("\0"), "", "", ""][:4]
    state.update(commit=commit, author=author, authored_at=authored, committer=committer)
    if files:
        try:
            listing = _git(executable, folder, "ls-tree", "-z", "HEAD", "--", *sorted(files))
        except OSError as exc:
            state["error"] = str(exc)
            return state
        at_head = {}
        for item in filter(None, listing.split("\0")):
            meta, _, name = item.partition("\t")
            at_head[Path(name).name] = meta.split()[-1]
        state["uncommitted"] = sorted(
            name
            for name, data in files.items()
            if (name in at_head if data is None else at_head.get(name) != _git_blob_id(data))
        )
    return state
