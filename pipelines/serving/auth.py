"""API keys with scopes for the HTTP API.

Two scopes: ``ingest`` keys may post feedback; ``admin`` keys may also change the catalogue
(``POST /videos``, ``DELETE /videos/{id}``) and reload bundles. Reads (``/recommend``,
``/similar``, health, metrics) never need a key. Keys come from environment variables
(comma-separated, so a new key can be added beside the old one) and from a keys file that is
read again when it changes, so keys rotate without a restart: add the new key, move the
clients, remove the old key.

When no key is configured anywhere, every endpoint is open; ``vidrec serve`` warns when it then
listens beyond loopback.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from core.config import ServingConfig
from core.errors import AuthError, ConfigError

logger = logging.getLogger(__name__)

MIN_KEY_CHARS = 16
# How often the keys file's modification time is checked; a rotation is in force this soon.
RECHECK_SECONDS = 1.0


class Scope(enum.Enum):
    """What a key allows."""

    INGEST = "ingest"
    ADMIN = "admin"


@dataclasses.dataclass(frozen=True)
class KeySet:
    """Keys per scope (admin keys imply ingest)."""

    admin: tuple[str, ...] = ()
    ingest: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.admin or self.ingest)

    def scope_of(self, given: str) -> Scope | None:
        """The scope ``given`` grants, or None; every key is compared, in constant time each,
        so the answer's timing says nothing about which key nearly matched."""
        encoded = given.encode("utf-8", "surrogateescape")
        admin = ingest = False
        for key in self.admin:
            admin |= hmac.compare_digest(encoded, key.encode("utf-8"))
        for key in self.ingest:
            ingest |= hmac.compare_digest(encoded, key.encode("utf-8"))
        if admin:
            return Scope.ADMIN
        return Scope.INGEST if ingest else None


def _checked(keys: list[str], where: str) -> tuple[str, ...]:
    for key in keys:
        # The header is read as latin-1 bytes: a non-ASCII key could never match.
        if len(key) < MIN_KEY_CHARS or not (key.isascii() and key.isprintable()) or " " in key:
            raise ConfigError(
                f"{where}: API keys must be at least {MIN_KEY_CHARS} printable ASCII characters "
                "without spaces (generate one with `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)"
            )
    return tuple(keys)


def _from_env(value: str | None, where: str) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def parse_keys_file(text: str, where: str) -> KeySet:
    """Keys from ``<admin|ingest> <key>`` lines (``#`` starts a comment).

    Raises:
        ConfigError: A line that is neither blank, a comment nor a scope and a key.
    """
    found: dict[Scope, list[str]] = {Scope.ADMIN: [], Scope.INGEST: []}
    for number, raw in enumerate(text.splitlines(), 1):
        # A comment starts a line or follows white space, so a key may contain '#'.
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        parts = line.split()
        scopes = {scope.value: scope for scope in Scope}
        if len(parts) != 2 or parts[0] not in scopes:
            raise ConfigError(
                f"{where} line {number}: expected '<admin|ingest> <key>', got {len(parts)} "
                f"field(s) starting {parts[0][:10]!r}"
            )
        found[scopes[parts[0]]].append(parts[1])
    return KeySet(
        admin=_checked(found[Scope.ADMIN], where), ingest=_checked(found[Scope.INGEST], where)
    )


class KeyRing:
    """The keys in force: environment keys plus the keys file, re-read when it changes.

    Args:
        config: Names of the environment variables and the keys file.
        environ: The environment (``os.environ`` by default).

    Raises:
        ConfigError: A malformed key or keys file at start-up. A file that turns bad later is
            logged and the last good keys stay in force.
    """

    def __init__(self, config: ServingConfig, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._env = KeySet(
            admin=_checked(
                _from_env(environ.get(config.api_key_env), config.api_key_env),
                config.api_key_env,
            ),
            ingest=_checked(
                _from_env(environ.get(config.ingest_key_env), config.ingest_key_env),
                config.ingest_key_env,
            ),
        )
        self._file = Path(config.api_keys_file) if config.api_keys_file else None
        self._file_keys = KeySet()
        self._file_stamp: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        if self._file is not None:
            self._file_keys = self._read_file()
            if not self._file_keys.configured:
                raise ConfigError(
                    f"serving.api_keys_file {self._file} holds no key; add '<admin|ingest> "
                    "<key>' lines, or unset serving.api_keys_file to run without keys"
                )
        # Decided once: a server started with keys never opens up because a file later reads
        # empty (an operator removing the last key, or a rewrite caught half-written).
        self._keyed = self._env.configured or self._file is not None

    def _read_file(self) -> KeySet:
        assert self._file is not None
        try:
            stat = self._file.stat()
            text = self._file.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"serving.api_keys_file {self._file}: {error}") from error
        keys = parse_keys_file(text, str(self._file))
        self._file_stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return keys

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked_at < RECHECK_SECONDS:
            return
        with self._lock:
            self._checked_at = now
            try:
                stat = self._file.stat()
            except OSError as error:
                logger.error(
                    "keys file %s unreadable (%s); keeping the last keys", self._file, error
                )
                return
            if (stat.st_ino, stat.st_mtime_ns, stat.st_size) == self._file_stamp:
                return
            try:
                keys = self._read_file()
            except ConfigError as error:
                logger.error("%s; keeping the last keys", error)
                return
            if not keys.configured:
                logger.error("keys file %s holds no key now; keeping the last keys", self._file)
                return
            self._file_keys = keys
            logger.info("keys file %s read again", self._file)

    @property
    def configured(self) -> bool:
        """Whether keys are configured (otherwise every endpoint is open); fixed at start-up."""
        return self._keyed

    def authorize(self, given: str | None, needed: Scope) -> None:
        """Checks a request's ``X-API-Key`` against the scope an endpoint needs.

        Raises:
            AuthError: 401 without a known key, 403 when the key's scope is too narrow.
        """
        if not self._keyed:
            return
        self._refresh()
        if not given:
            raise AuthError(
                f"this endpoint needs an API key with the {needed.value} scope "
                "in the X-API-Key header"
            )
        scopes = {self._env.scope_of(given), self._file_keys.scope_of(given)}
        if Scope.ADMIN in scopes:
            return
        if Scope.INGEST in scopes:
            if needed is Scope.INGEST:
                return
            raise AuthError(
                "this endpoint needs an admin key; the key given is an ingest key", status=403
            )
        raise AuthError("unknown API key in X-API-Key")
