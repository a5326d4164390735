"""Key rotation: the JWKS kept current while serving, without a restart and without hammering the IdP.

A :class:`KeyRing` holds the keys ``identity.py`` verifies against and re-reads their source:

* every ``identity.jwks_refresh`` seconds (``running``, beside the transport), so a key the IdP removed stops
  verifying after the next read;
* on a token naming a ``kid`` the ring does not hold (``refresh_for_unknown_kid``), at most once per
  ``identity.jwks_min_refresh`` seconds: a flood of forged kids costs the IdP one fetch per window, and callers
  arriving while a read is in flight wait for that one read rather than starting their own.

``identity.jwks_url`` is fetched asynchronously through the egress guard (``egress.guarded_async_client``);
``identity.jwks_file`` is re-parsed only when its contents change (size, modification time, then SHA-256). A
read that fails (IdP unreachable, a half-written or invalid document) keeps the last good keys, for at most
``identity.jwks_max_stale`` seconds after the last good read; past that every token is refused with reason
``keys stale`` until a read succeeds: the gateway fails closed rather than trusting keys it can no longer check.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import httpx

from mcp_gateway.config import EgressSettings, IdentitySettings
from mcp_gateway.egress import guarded_async_client, guarded_get
from mcp_gateway.errors import ConfigError, UnauthenticatedError
from mcp_gateway.jose import KEYS_STALE
from mcp_gateway.jwks import JwkSet, parse_jwks, read_jwks

__all__ = ["MAX_JWKS_BYTES", "KeyRing", "load_keyring", "url_fetcher"]

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1_048_576
Fetch = Callable[[str], Awaitable[bytes]]


def url_fetcher(egress: EgressSettings, *, timeout: float = 10.0) -> Fetch:
    """An async fetch of a URL's body through the egress guard, refusing bodies over ``MAX_JWKS_BYTES``.

    Each fetch opens its own guarded client and closes it: fetches are rare (one per ``jwks_min_refresh`` window
    at most, besides the timer), and no pool outlives the event loop that opened it.
    """

    async def fetch(url: str) -> bytes:
        with anyio.fail_after(timeout):
            async with (
                guarded_async_client(egress, max_connections=1) as client,
                client.stream("GET", url) as response,
            ):
                response.raise_for_status()
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError(f"answer exceeds {MAX_JWKS_BYTES} bytes")
                return bytes(body)

    return fetch


def load_keyring(settings: IdentitySettings, egress: EgressSettings) -> KeyRing:
    """Read the JWKS now (start-up: a blocking, guarded fetch) and return a ring that keeps it current.

    Raises:
        ConfigError: The JWKS cannot be read or is invalid: the gateway does not start without keys.
    """
    data, source = read_jwks(settings, lambda url: guarded_get(egress, url, max_bytes=MAX_JWKS_BYTES))
    fetch = url_fetcher(egress) if settings.jwks_url is not None else None
    return KeyRing(settings, parse_jwks(data, source=source), fetch=fetch, document=data)


class KeyRing:
    """The current JWKS, re-read on a timer and on unknown kids; see the module docstring."""

    def __init__(
        self,
        settings: IdentitySettings | None,
        keys: JwkSet,
        *,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
        document: bytes | None = None,
    ) -> None:
        """A ring holding ``keys``, read from ``settings``' source just now.

        Args:
            settings: The JWKS source and the refresh bounds; None for a fixed set that is never re-read.
            keys: The keys read at start-up (``jwks.load_jwks``).
            fetch: Fetches ``identity.jwks_url`` (``url_fetcher``); required when the source is a URL.
            clock: Monotonic seconds; tests pass a fake one.
            document: The bytes ``keys`` were parsed from: a re-read of the same bytes changes nothing.
        """
        if settings is not None and settings.jwks_url is not None and fetch is None:
            raise ConfigError("identity.jwks_url is set but no HTTP client was given to re-fetch it")
        self._settings = settings
        self._keys = keys
        self._fetch = fetch
        self._clock = clock
        self._good_at = clock()
        self._attempted_at = clock()
        self._inflight: anyio.Event | None = None
        # The digest of the document the keys came from.
        self._digest = None if document is None else hashlib.sha256(document).digest()
        # Bumped whenever the keys change: the verifier drops principals it cached under older keys.
        self.generation = 0
        self.reads = 0

    @classmethod
    def fixed(cls, keys: JwkSet) -> KeyRing:
        """A ring that never re-reads and never goes stale (tests, one-shot commands)."""
        return cls(None, keys)

    def current(self) -> JwkSet:
        """The keys in force.

        Raises:
            UnauthenticatedError: reason ``keys stale``: no read succeeded for ``identity.jwks_max_stale`` seconds.
        """
        settings = self._settings
        if settings is not None:
            age = self._clock() - self._good_at
            if age > settings.jwks_max_stale:
                raise UnauthenticatedError(
                    f"the JWKS was last read {age:.0f} s ago, past identity.jwks_max_stale "
                    f"({settings.jwks_max_stale:g} s); refusing every token until a read succeeds",
                    reason=KEYS_STALE,
                )
        return self._keys

    def age(self) -> float:
        """Seconds since the last successful read (``identity.jwks_max_stale`` is where tokens start failing)."""
        return self._clock() - self._good_at

    async def refresh_for_unknown_kid(self) -> bool:
        """Re-read the JWKS for a token naming an unknown kid, unless one was read under ``jwks_min_refresh`` ago.

        Returns:
            True when the keys changed since the call began (the caller looks its kid up once more).
        """
        settings = self._settings
        if settings is None:
            return False
        generation = self.generation
        inflight = self._inflight
        if inflight is not None:
            await inflight.wait()
        elif self._clock() - self._attempted_at >= settings.jwks_min_refresh:
            await self.refresh()
        return self.generation != generation

    async def refresh(self) -> None:
        """Read the source now (or wait for the read in flight); a failure keeps the last good keys."""
        if self._settings is None:
            return
        if self._inflight is not None:
            await self._inflight.wait()
            return
        event = anyio.Event()
        self._inflight = event
        self._attempted_at = self._clock()
        try:
            await self._read(self._settings)
        except (ConfigError, OSError, ValueError, httpx.HTTPError, TimeoutError) as exc:
            logger.error("JWKS re-read failed, the last good keys stay in force: %s", exc)
        finally:
            self._inflight = None
            event.set()

    async def _read(self, settings: IdentitySettings) -> None:
        self.reads += 1
        if settings.jwks_url is not None and self._fetch is not None:
            source = f"identity.jwks_url {settings.jwks_url}"
            data = await self._fetch(settings.jwks_url)
        else:
            path = Path(str(settings.jwks_file))  # IdentitySettings requires exactly one source
            source = f"identity.jwks_file {path}"
            # Read whole and compared by digest: a JWKS is a few kilobytes, and a rewrite of the same size within
            # one timestamp tick is still seen.
            data = await anyio.to_thread.run_sync(path.read_bytes)
        digest = hashlib.sha256(data).digest()
        if digest != self._digest:
            keys = parse_jwks(data, source=source)
            added = sorted(set(keys.keys) - set(self._keys.keys))
            removed = sorted(set(self._keys.keys) - set(keys.keys))
            logger.warning("JWKS changed (%s): keys added %s, removed %s", source, added, removed)
            self._keys, self._digest = keys, digest
            self.generation += 1
        self._good_at = self._clock()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Re-read the source every ``identity.jwks_refresh`` seconds while the block runs."""
        settings = self._settings
        if settings is None:
            yield
            return

        async def loop() -> None:
            while True:
                await anyio.sleep(settings.jwks_refresh)
                await self.refresh()

        async with anyio.create_task_group() as group:
            group.start_soon(loop)
            try:
                yield
            finally:
                group.cancel_scope.cancel()
