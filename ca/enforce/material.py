"""The workload's certificate files (the agent's output) and their reload at rotation.

The agent writes each issuance into a fresh hidden directory and swaps the
`..data` link (ca.issuance.cert_dir). The watcher polls that link's target every
0.5 s (an APScheduler interval job; one readlink per poll) and, when it
changes, reads the three files through the resolved directory, so chain, key
and roots come from one issuance. For a directory without `..data` (files put
there by other means) the files' (mtime, size, inode) are the version.

A set that cannot be read or is inconsistent (a key for another certificate, a
leaf outside the trust domain, an expired leaf, a crl.pem not signed by a CA of
the trust bundle or of the workload's own chain) is logged and counted, and the
previous contexts stay in use; the next change is tried again.

`crl.pem` is optional: the agent writes it in the same set once the CA has sent
its revocation lists (with `crl-signers.pem` when some of them come from a signing CA
outside the workload's own chain, as while the CA rotates: those CA certificates are
trusted as CRL issuers when they chain to root-cert.pem, and ignored with a log line if not),
and peers they list are refused from the next handshake on (`ca.enforce.peer.PeerCache`).
Lists past their nextUpdate stay in use (a revoked certificate stays revoked) and are logged,
since only the agent can fetch newer ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.common.clock import Clock
from ca.enforce.tls import Material, TlsContexts, TlsEngine
from ca.errors import ConfigError, InvalidSpiffeIdError
from ca.issuance.cert_dir import CERT_CHAIN, CRL, CRL_SIGNERS, DATA_LINK, KEY, ROOT_CERT
from ca.issuance.crl import (
    NO_REVOCATIONS,
    InvalidCrlError,
    RevocationLists,
    load_pem_crls,
    supplied_crl_issuers,
    trusted_crl_issuers,
)
from ca.issuance.svid_id import svid_spiffe_id

log = logging.getLogger(__name__)
FILES = (CERT_CHAIN, KEY, ROOT_CERT)
OPTIONAL_FILES = (CRL, CRL_SIGNERS)
POLL_INTERVAL_S = 0.5


def version_of(directory: Path) -> str | None:
    """What identifies the current set of files; None if there is none yet."""
    try:
        return "link:" + os.readlink(directory / DATA_LINK)
    except FileNotFoundError:
        pass
    except OSError:  # ..data exists but is not a link
        pass
    stamps = []
    for name in (*FILES, *OPTIONAL_FILES):
        try:
            stat = os.stat(directory / name)
        except FileNotFoundError:
            if name in OPTIONAL_FILES:
                continue
            return None
        stamps.append(f"{stat.st_mtime_ns}:{stat.st_size}:{stat.st_ino}")
    return "files:" + ",".join(stamps)


def read_files(directory: Path) -> tuple[str, dict[str, bytes]]:
    """The three files of one issuance (and crl.pem and crl-signers.pem, when the set has them)
    and the version they belong to."""
    version = version_of(directory)
    if version is None:
        raise ConfigError(f"{directory} has no {', '.join(FILES)} yet; is the agent writing there?")
    base = directory / os.readlink(directory / DATA_LINK) if version.startswith("link:") else directory
    try:
        files = {name: (base / name).read_bytes() for name in FILES}
        for name in OPTIONAL_FILES:
            with contextlib.suppress(FileNotFoundError):
                files[name] = (base / name).read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the certificate files in {base}: {err}") from err
    return version, files


def check_revocations(
    crl_pem: bytes | None,
    chain: list[x509.Certificate],
    roots: list[x509.Certificate],
    signers_pem: bytes | None = None,
) -> RevocationLists:
    """The CRLs of crl.pem if a CA of the trust bundle (or of our chain up to it, or of
    crl-signers.pem chaining to it) signed each."""
    if crl_pem is None:
        return NO_REVOCATIONS
    trusted = trusted_crl_issuers(chain[1:], roots)
    extra = supplied_crl_issuers(_load_signers(signers_pem), trusted)
    for ignored in extra.ignored:
        log.warning(
            f"ignored a CA certificate of {CRL_SIGNERS}; a CRL only it vouches for is refused",
            extra={"subject": ignored.cert.subject.rfc4514_string(), "reason": ignored.reason},
        )
    try:
        crls = load_pem_crls(crl_pem, CRL)
        return RevocationLists.checked(crls, trusted, extra_issuers=extra.trusted)
    except InvalidCrlError as err:
        raise ConfigError(f"{CRL} cannot be used: {err}") from err


def _load_signers(signers_pem: bytes | None) -> list[x509.Certificate]:
    if signers_pem is None or not signers_pem.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(signers_pem)
    except ValueError as err:
        raise ConfigError(
            f"{CRL_SIGNERS} does not hold PEM certificates ({err}); the agent writes it with "
            f"{CRL}: is something else writing in the certificate directory?"
        ) from err


def check_material(files: dict[str, bytes], *, version: str, trust_domain: str, now: datetime) -> Material:
    """A Material if the files form a usable identity; ConfigError saying what is wrong if not."""
    try:
        chain = x509.load_pem_x509_certificates(files[CERT_CHAIN])
        roots = x509.load_pem_x509_certificates(files[ROOT_CERT])
        key = serialization.load_pem_private_key(files[KEY], password=None)
    except ValueError as err:
        raise ConfigError(f"the certificate files do not parse: {err}") from err
    leaf = chain[0]
    try:
        spiffe_id = svid_spiffe_id(leaf)
    except InvalidSpiffeIdError as err:
        raise ConfigError(f"{CERT_CHAIN} is not an X.509-SVID: {err}") from err
    if not spiffe_id.is_member_of(trust_domain):
        raise ConfigError(f"{CERT_CHAIN} names {spiffe_id}, outside trust domain {trust_domain}")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != leaf.public_key().public_bytes(der, public):
        raise ConfigError(f"{KEY} does not belong to the certificate in {CERT_CHAIN}")
    if now >= leaf.not_valid_after_utc:
        raise ConfigError(f"the certificate in {CERT_CHAIN} expired at {leaf.not_valid_after_utc}")
    if not roots:
        raise ConfigError(f"{ROOT_CERT} holds no certificate")
    return Material(
        chain_pem=files[CERT_CHAIN],
        key_pem=files[KEY],
        roots_pem=files[ROOT_CERT],
        spiffe_id=spiffe_id,
        serial=leaf.serial_number,
        not_after=leaf.not_valid_after_utc,
        version=version,
        revocations=check_revocations(files.get(CRL), chain, roots, files.get(CRL_SIGNERS)),
    )


class CertWatcher:
    """Holds the TLS contexts for the current files; `poll` swaps in new ones when the files change.

    `current` is read by the event loop without a lock: it is one attribute,
    replaced whole.
    """

    def __init__(
        self,
        directory: Path,
        *,
        trust_domain: str,
        engine: TlsEngine,
        clock: Clock,
        on_load: Callable[[Material], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        self.engine = engine
        self.clock = clock
        self.current: TlsContexts | None = None
        self._on_load = on_load
        self._on_failure = on_failure
        self._seen: str | None = None  # the last version tried, loaded or not
        self._lock = threading.Lock()
        self.loaded = threading.Event()

    def poll(self) -> None:
        with self._lock:
            version = version_of(self.directory)
            if version is None or version == self._seen:
                return
            self._seen = version
            try:
                self._load()
            except ConfigError as err:
                log.error(
                    "cannot use the new workload certificate files; the previous ones stay in use",
                    extra={"cert_dir": str(self.directory), "error": str(err)},
                )
                if self._on_failure is not None:
                    self._on_failure(str(err))

    def _load(self) -> None:
        version, files = read_files(self.directory)
        material = check_material(
            files, version=version, trust_domain=self.trust_domain, now=self.clock.now()
        )
        contexts = self.engine.contexts(material)
        self.current = contexts
        self._seen = version
        self.loaded.set()
        log.info(
            "workload certificate loaded",
            extra={
                "spiffe_id": str(material.spiffe_id),
                "serial": f"{material.serial:x}",
                "not_after": material.not_after.isoformat(),
                "engine": self.engine.name,
            },
        )
        _log_revocations(material.revocations, self.clock.now())
        if self._on_load is not None:
            self._on_load(material)


def _log_revocations(revocations: RevocationLists, now: datetime) -> None:
    if not revocations:
        return
    fields = {
        "crl_number": revocations.number,
        "revoked": revocations.entry_count,
        "next_update": revocations.next_update.isoformat() if revocations.next_update else None,
    }
    if revocations.next_update is not None and revocations.next_update < now:
        log.warning(
            "the revocation lists are past their nextUpdate; still refusing what they list "
            "(is the agent connected to the CA?)",
            extra=fields,
        )
    else:
        log.info("revocation lists loaded", extra=fields)
