"""CA material kept in the state directory: a self-signed root that survives restarts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ca.common.files import SECRET_MODE, atomic_write, exclusive_lock
from ca.errors import CaMaterialError, ConfigError
from ca.issuance.authority import SigningAuthority, cert_pem, load_pem_certificates
from ca.issuance.keys import load_private_key_pem, private_key_pem
from ca.issuance.selfsigned import RootFactory, check_trust_domain

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
TRUST_BUNDLE = "root-cert.pem"
LOCK = ".meshca.lock"


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


def load_or_create_root(state_dir: Path, factory: RootFactory) -> tuple[SigningAuthority, bool]:
    """The root kept in `state_dir`, made on first use. Returns (authority, created).

    A file lock makes concurrent first starts agree on one root.
    """
    with exclusive_lock(state_dir / LOCK):
        cert_path, key_path = state_dir / CA_CERT, state_dir / CA_KEY
        if cert_path.exists() or key_path.exists():
            return check_trust_domain(_load(cert_path, key_path), factory.trust_domain), False
        authority = factory.create(source=str(state_dir))
        atomic_write(key_path, private_key_pem(authority.signing_key), mode=SECRET_MODE)
        atomic_write(cert_path, cert_pem(authority.signing_cert).encode())
        return authority, True


def _load(cert_path: Path, key_path: Path) -> SigningAuthority:
    missing = [p.name for p in (cert_path, key_path) if not p.exists()]
    if missing:
        raise CaMaterialError(
            f"{cert_path.parent} holds only part of a CA ({', '.join(missing)} missing); "
            "restore the missing file, or remove both to make a new root (every workload "
            "certificate then has to be reissued)"
        )
    cert = load_pem_certificates(cert_path.read_bytes(), str(cert_path))[0]
    key = load_private_key_pem(key_path.read_bytes(), str(key_path))
    return SigningAuthority(
        signing_cert=cert, signing_key=key, chain=(), roots=(cert,), source=str(cert_path.parent)
    )


def write_trust_bundle(state_dir: Path, authority: SigningAuthority) -> Path:
    path = state_dir / TRUST_BUNDLE
    atomic_write(path, authority.trust_bundle_pem().encode())
    return path
