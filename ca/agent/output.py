"""Certificates on disk in Istio's layout, switched atomically as a set.

The files live in a fresh hidden directory; a `..data` symlink names the
current one and is replaced with one rename, and `cert-chain.pem`, `key.pem`,
`root-cert.pem` and (once the CA has sent revocation lists) `crl.pem` and
`crl-signers.pem` point through it. A reader therefore never sees a key from
one issuance beside a chain from another (the scheme the kubelet uses for
projected volumes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cryptography import x509

from ca.agent.svid import Svid
from ca.common.files import PUBLIC_MODE, SECRET_MODE, fsync_directory
from ca.issuance.cert_dir import CERT_CHAIN, CRL, CRL_SIGNERS, DATA_LINK, KEY, ROOT_CERT


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _replace_symlink(link: Path, target: str) -> None:
    temporary = link.with_name(link.name + ".tmp")
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, link)


def write_svid(
    directory: Path, svid: Svid, *, crl_pem: bytes | None = None, crl_signers_pem: bytes | None = None
) -> Path:
    """Write the SVID's chain, key and roots, `crl_pem` as crl.pem and `crl_signers_pem` as
    crl-signers.pem when given (without one the set has no such file); returns the new
    versioned directory."""
    directory.mkdir(parents=True, exist_ok=True)
    version = Path(tempfile.mkdtemp(prefix="..", dir=directory))
    _write(version / CERT_CHAIN, svid.chain_pem(), PUBLIC_MODE)
    _write(version / KEY, svid.key_pem(), SECRET_MODE)
    _write(version / ROOT_CERT, svid.roots_pem(), PUBLIC_MODE)
    names = [CERT_CHAIN, KEY, ROOT_CERT]
    optional = {CRL: crl_pem, CRL_SIGNERS: crl_signers_pem}
    for name, data in optional.items():
        if data is not None:
            _write(version / name, data, PUBLIC_MODE)
            names.append(name)
    os.chmod(version, 0o755)
    fsync_directory(version)
    previous = _current_version(directory)
    _replace_symlink(directory / DATA_LINK, version.name)
    for name in names:
        link = directory / name
        if not (link.is_symlink() and os.readlink(link) == f"{DATA_LINK}/{name}"):
            _replace_symlink(link, f"{DATA_LINK}/{name}")
    for name, data in optional.items():
        if data is None and (directory / name).is_symlink():
            (directory / name).unlink()  # it would point at nothing in the new set
    fsync_directory(directory)
    if previous is not None and previous != version:
        shutil.rmtree(previous, ignore_errors=True)
    return version


def read_leaf(directory: Path) -> x509.Certificate | None:
    """The leaf of the chain last written in `directory`: None when there is none, or when what
    is there does not parse as PEM certificates."""
    try:
        return x509.load_pem_x509_certificates((directory / CERT_CHAIN).read_bytes())[0]
    except (OSError, ValueError):
        return None


def _current_version(directory: Path) -> Path | None:
    link = directory / DATA_LINK
    if not link.is_symlink():
        return None
    return directory / os.readlink(link)
