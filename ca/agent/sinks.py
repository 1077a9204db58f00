"""Where a validated SVID goes: files in the output directory, and the socket servers."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from ca.agent.bundle import BundleNotServedError
from ca.agent.output import write_svid
from ca.agent.svid import Svid

if TYPE_CHECKING:
    # Imported when the CA's lists come (from the control stream): `--once` never has any.
    from ca.issuance.crl import RevocationLists

log = logging.getLogger("meshca.agent")


class FileSink:
    """The output directory: the SVID's files and, once there are any, the CA's CRLs as crl.pem
    (with crl-signers.pem, when CA certificates sent with them were trusted as their issuers).

    Each change writes a new set (ca.agent.output), so crl.pem and a pushed trust bundle's
    root-cert.pem switch with the others. Called from the renewal thread (SVIDs) and the
    control stream (CRLs, bundles): one write at a time.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._svid: Svid | None = None
        self._revocations: RevocationLists | None = None  # none received (as an empty set)
        # The CAs the lists were checked against: those sent with them, and the signing CAs of
        # the SVID held when they came (see `_crl_signers`).
        self._vouched: tuple[x509.Certificate, ...] = ()

    def publish(self, svid: Svid) -> None:
        with self._lock:
            self._svid = svid
            self._write()

    def publish_crls(self, revocations: RevocationLists) -> None:
        with self._lock:
            self._revocations = revocations
            held = self._svid.chain[1:] if self._svid is not None else ()
            self._vouched = (*revocations.extra_issuers, *held)
            if self._svid is None:
                return
            try:
                self._write()
            except OSError as err:
                # The sockets serve the new lists already; the next certificate writes them again.
                log.error(
                    "cannot write crl.pem; the files keep the previous revocation lists",
                    extra={"output_dir": str(self.directory), "error": str(err)},
                )

    def publish_bundle(self, roots: Sequence[x509.Certificate]) -> None:
        """root-cert.pem holds `roots` from now on (until the next SVID brings its own)."""
        with self._lock:
            if self._svid is None:
                return
            self._svid = dataclasses.replace(self._svid, roots=tuple(roots))
            try:
                self._write()
            except OSError as err:
                raise BundleNotServedError(
                    f"cannot write root-cert.pem in {self.directory} ({err}); the files keep the "
                    "previous roots until the directory is writable and the next certificate",
                    reason="bundle_write_failed",
                ) from err

    def _write(self) -> None:
        assert self._svid is not None
        revocations = self._revocations
        if not revocations:
            write_svid(self.directory, self._svid, crl_pem=None, crl_signers_pem=None)
            return
        from ca.issuance.crl import certificates_pem

        signers = self._crl_signers(self._svid)
        write_svid(
            self.directory,
            self._svid,
            crl_pem=revocations.pem(),
            crl_signers_pem=certificates_pem(signers) if signers else None,
        )

    def _crl_signers(self, svid: Svid) -> tuple[x509.Certificate, ...]:
        """What crl-signers.pem vouches for beside `svid`'s own chain and roots: every CA the lists
        were checked against that this SVID does not bring. While the CA rotates, a new SVID
        may come from another signing CA than the one held when the lists came; the CRL of that
        earlier one then still needs vouching for, or the enforcer refuses the whole set."""
        from ca.issuance.crl import certificate_der

        own = {certificate_der(cert) for cert in (*svid.chain[1:], *svid.roots)}
        signers: list[x509.Certificate] = []
        for cert in self._vouched:
            der = certificate_der(cert)
            if der not in own:
                own.add(der)
                signers.append(cert)
        return tuple(signers)
