"""Two signing CAs live at once, as while the CA rotates its signing slot: leaves of either are
valid, and a node's own chain names only one of them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from ca.issuance.authority import SigningAuthority
from ca.issuance.keys import PrivateKey
from tests.support.pki import make_hierarchy, make_signing_ca


def authority_under(
    root: x509.Certificate, root_key: PrivateKey, *, subject: str, now: datetime
) -> SigningAuthority:
    """A signing CA directly under `root`, as the self-signed mode's slots are."""
    key, cert = make_signing_ca(root, root_key, subject=subject, now=now)
    return SigningAuthority.from_parts(
        signing_cert=cert, signing_key=key, cert_chain=[cert, root], roots=[root], source=subject
    )


@dataclass(frozen=True)
class TwoSigningCas:
    root: x509.Certificate
    root_key: PrivateKey
    first: SigningAuthority  # the retiring slot's
    second: SigningAuthority  # the active slot's


def two_signing_cas(now: datetime) -> TwoSigningCas:
    hierarchy = make_hierarchy(now)
    root, root_key = hierarchy.root, hierarchy.root_key
    return TwoSigningCas(
        root=root,
        root_key=root_key,
        first=authority_under(root, root_key, subject="signing CA 1", now=now),
        second=authority_under(root, root_key, subject="signing CA 2", now=now),
    )
