"""Where the ledger is: the `--ledger` flag's value as a database URL."""

from __future__ import annotations

from pathlib import Path

from ca.errors import ConfigError


def ledger_url(text: str, state_dir: Path) -> str | None:
    text = text.strip()
    if text in ("off", "none", ""):
        return None
    if text == "auto":
        return f"sqlite:///{state_dir.resolve() / 'ledger.db'}"
    if not text.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise ConfigError(f"--ledger {text!r} is not auto, off, a sqlite:/// URL or a postgresql:// URL")
    return text
