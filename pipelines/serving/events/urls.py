"""Which event store a command uses: ``--events`` > ``VIDREC_EVENTS_URL`` > ``serving.events_url``
> ``<artifacts>/events.db``, and what its URL means.

- ``sqlite:///relative/events.db`` and ``sqlite:////srv/vidrec/events.db`` (absolute): the
  embedded SQLite store, as SQLAlchemy spells it; a plain path means SQLite too, so every
  ``--events PATH`` written before URLs existed keeps its meaning.
- ``postgresql://user@host:port/dbname`` (or ``postgres://``): a PostgreSQL store shared by
  every replica and the retrain; anything libpq takes in a URI (``?sslmode=require``,
  ``?options=-csearch_path%3Dvidrec``, ``?host=/run/postgresql`` for a Unix socket) is passed on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from core.errors import ConfigError

ENV_VAR = "VIDREC_EVENTS_URL"
DEFAULT_FILE = "events.db"

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_SCHEMES = {"sqlite": SQLITE, "postgresql": POSTGRESQL, "postgres": POSTGRESQL}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def backend_of(location: str | os.PathLike[str]) -> str:
    """`SQLITE` or `POSTGRESQL` for a store URL or a plain path.

    Raises:
        ConfigError: A URL of another scheme.
    """
    text = os.fspath(location)
    match = _SCHEME.match(text)
    if match is None:
        return SQLITE
    scheme = match.group(1).lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"event store {redact(text)!r}: unknown scheme {scheme!r}; use a file path, "
            "sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME"
        )
    return _SCHEMES[scheme]


def sqlite_path(location: str | os.PathLike[str]) -> Path:
    """The file of a SQLite store: a plain path, or ``sqlite:///relative`` /
    ``sqlite:////absolute`` (three slashes, then the path as written).

    Raises:
        ConfigError: ``sqlite://`` with a host, or with no path.
    """
    text = os.fspath(location)
    if not text.lower().startswith("sqlite:"):
        return Path(text)
    if not text.lower().startswith("sqlite:///") or len(text) == len("sqlite:///"):
        raise ConfigError(
            f"event store {text!r}: write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (or a plain path)"
        )
    return Path(text[len("sqlite:///") :])


def redact(location: str) -> str:
    """A store URL fit for logs and error messages: any password replaced by ``***``."""
    text = re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", location)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", text, flags=re.IGNORECASE)


def resolve_events_url(
    flag: str | None,
    configured: str | None,
    artifacts: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
) -> str:
    """The event store a command uses.

    Args:
        flag: ``--events`` as given (wins).
        configured: ``serving.events_url`` of the config file.
        artifacts: The artifacts root (its ``events.db`` is the default).
        environ: Where ``VIDREC_EVENTS_URL`` is read (default: the process environment).

    Returns:
        A URL or a plain path (`backend_of` tells which backend it names).

    Raises:
        ConfigError: The chosen value names no backend vidrec has.
    """
    environ = os.environ if environ is None else environ
    for value in (flag, environ.get(ENV_VAR), configured):
        if value:
            backend_of(value)
            return value
    return str(Path(artifacts) / DEFAULT_FILE)
