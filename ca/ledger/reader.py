"""Opening a ledger for reading: an audit never creates, migrates or locks one.

`LedgerStore` takes SQLite's write lock for every transaction (BEGIN IMMEDIATE),
which is right for the CA's appends but would make a long audit query hold up
issuance. A reader's SQLite connections are plain read transactions with
`query_only` set, so they run beside a writing CA (WAL) without blocking it.

Each transaction of a reader is a snapshot (SQLite: a deferred BEGIN, PostgreSQL:
REPEATABLE READ): every statement in it sees the ledger as of its first read, so an
entry, its neighbours, the head row and the checkpoints read together agree even
while a CA appends. The chain checks rely on that.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ca.errors import ConfigError
from ca.ledger import schema
from ca.ledger.store import make_engine, redact_url, sqlite_read_engine

# A reader's statements may scan a large ledger (a report, an export batch); PostgreSQL's
# statement timeout is five times this.
POSTGRES_LOCK_TIMEOUT_S = 12.0


class LedgerReader:
    """Read access to one ledger database; `engine` is what the audit queries run on."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()


def sqlite_path(url: str) -> Path:
    """The file of a sqlite:/// URL."""
    return Path(url.removeprefix("sqlite:///").partition("?")[0])


def open_reader(url: str) -> LedgerReader:
    """A reader for the ledger at `url`, which must exist and have this meshca's schema."""
    shown = redact_url(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if not path.is_file():
            missing = "" if path.parent.is_dir() else f" ({path.parent} does not exist)"
            raise ConfigError(
                f"there is no ledger at {path}{missing}; give --state-dir the state directory of an "
                "existing CA, or --ledger its ledger (a sqlite:/// or postgresql:// URL)"
            )
        engine = sqlite_read_engine(url)
    else:
        engine = make_engine(url, lock_timeout_s=POSTGRES_LOCK_TIMEOUT_S, snapshot_reads=True)
    try:
        with engine.connect() as conn:
            found = schema.version(conn)
    except SQLAlchemyError as err:
        engine.dispose()
        raise ConfigError(
            f"cannot read the ledger at {shown} ({str(err).splitlines()[0]}); "
            "check --ledger and that the database is reachable and readable"
        ) from err
    if found == 0:
        engine.dispose()
        raise ConfigError(f"{shown} holds no meshca ledger; point --ledger at the CA's ledger database")
    if found != schema.CURRENT_VERSION:
        engine.dispose()
        advice = (
            "start this version of 'meshca serve' on it once to upgrade it"
            if found < schema.CURRENT_VERSION
            else "audit it with the newer meshca that wrote it"
        )
        raise ConfigError(
            f"the ledger at {shown} has schema version {found} but this meshca reads version "
            f"{schema.CURRENT_VERSION}; {advice}"
        )
    return LedgerReader(url, engine)
