"""The state directory: checked before anything is written to it, and the trust bundle file in it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ca.common.files import atomic_write
from ca.errors import ConfigError
from ca.issuance.authority import SigningAuthority

TRUST_BUNDLE = "root-cert.pem"


def prepare(state_dir: Path) -> Path:
    """Create `state_dir` if missing and prove it is a directory this process can write.

    Checked by writing, not by permission bits: root ignores the bits, and a read-only
    mount refuses even root. Nothing else is written before this passes.
    """
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(
            f"--state-dir {state_dir} is a file, not a directory; give a directory (it is created if missing)"
        )
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create the state directory {state_dir} ({_reason(err)}); create it yourself "
            "with write access for this user, or give another --state-dir"
        ) from err
    try:
        with tempfile.TemporaryFile(dir=state_dir, prefix=".meshca-write-check."):
            pass
    except OSError as err:
        raise ConfigError(
            f"the state directory {state_dir} is not writable ({_reason(err)}); give this user "
            "write access to it, or give another --state-dir"
        ) from err
    return state_dir


def _reason(err: OSError) -> str:
    if isinstance(err, FileExistsError | NotADirectoryError):
        return "a file stands where a directory is needed"
    return os.strerror(err.errno) if err.errno is not None else str(err)


def write_trust_bundle(state_dir: Path, authority: SigningAuthority) -> Path:
    path = state_dir / TRUST_BUNDLE
    atomic_write(path, authority.trust_bundle_pem().encode())
    return path
