"""SQLite WAL checkpoints off the call path, for the audit trail.

In WAL mode a commit appends pages to the ``-wal`` file; a checkpoint copies them back into the database. Left to
SQLite, the commit that crosses ``wal_autocheckpoint`` pages runs the checkpoint itself, and that caller waits
(4-9 ms stalls were measured). The trail's writer connections set the automatic checkpoint far off
(:data:`BACKSTOP_PAGES`, about 40 MB of WAL, for when this thread cannot keep up) and :class:`WalCheckpointer`
runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a thread and a connection of its own after about every
:data:`CHECKPOINT_EVERY` rows (a lone row writes 2 to 4 pages: about SQLite's own default of 1,000 pages).
PASSIVE never waits for readers or writers, so appends carry on meanwhile; what it cannot copy now (a reader
still needs it) is copied next time.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress

from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

__all__ = ["BACKSTOP_PAGES", "CHECKPOINT_EVERY", "WalCheckpointer"]

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY = 256
BACKSTOP_PAGES = 10_000


class WalCheckpointer:
    """Checkpoints the WAL of ``engine``'s database in the background as rows are written."""

    def __init__(self, engine: Engine, every: int = CHECKPOINT_EVERY) -> None:
        self._engine = engine
        self._every = every
        self._rows = 0  # written since the last request
        self._due = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._passes = 0  # checkpoint passes run, successful or not
        self._passed = threading.Condition()

    def written(self, rows: int) -> None:
        """``rows`` rows were committed (rows, not commits: a group commit of 256 rows writes many pages).

        Never raises: the rows are committed by now, and the writer's own automatic checkpoint is the backstop.
        """
        self._rows += rows
        if self._rows < self._every:
            return
        self._rows = 0
        if self._thread is None or not self._thread.is_alive():
            thread = threading.Thread(target=self._run, name="audit-wal-checkpoint", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                logger.warning("audit WAL checkpoint thread not started: %s", exc)
                return
            self._thread = thread
        self._due.set()

    def wait_passes(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` checkpoint passes have run since start-up; False if ``timeout`` s pass first.

        For tests and diagnostics: what a pass achieved is the database's to tell (the file grows, the WAL
        shrinks); this says only that it ran.
        """
        with self._passed:
            return self._passed.wait_for(lambda: self._passes >= count, timeout)

    def close(self) -> None:
        self._closing = True
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        connection: PoolProxiedConnection | None = None
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._closing:
                    return
                try:
                    if connection is None:
                        connection = self._engine.raw_connection()
                    cursor = connection.cursor()
                    try:
                        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                        cursor.fetchall()
                    finally:
                        cursor.close()
                except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure; the backstop remains
                    logger.warning("audit WAL checkpoint failed (retried later): %s", exc)
                    if connection is not None:
                        with suppress(Exception):
                            connection.close()
                    connection = None
                with self._passed:
                    self._passes += 1
                    self._passed.notify_all()
        finally:
            if connection is not None:
                with suppress(Exception):
                    connection.close()
