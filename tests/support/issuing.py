"""Roots, issuers and CSRs for the issuance tests, extensions read back, a CA directory's error."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509

from ca.errors import CaMaterialError, ConfigError, ErrorKind
from ca.issuance.authority import SigningAuthority
from ca.issuance.cacerts import load_cacerts_dir
from ca.issuance.csr import ParsedCsr, parse_csr
from ca.issuance.issuer import IssuancePolicy, IssuedCertificate, Issuer
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.keys import KeyAlgorithm, PrivateKey
from ca.issuance.selfsigned import RootFactory
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.pki import Hierarchy, make_csr

TRUST_DOMAIN = "cluster.local"


WEB = SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web")


E = TypeVar("E", bound=x509.ExtensionType)


ROOT_SERIAL = 0x1234


def make_root(
    clock: FakeClock, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256, key: PrivateKey | None = None
) -> SigningAuthority:
    factory = RootFactory(
        trust_domain=TRUST_DOMAIN,
        key_algorithm=algorithm,
        clock=clock,
        serials=lambda: ROOT_SERIAL,
        **({"generate_key": lambda _alg: key} if key is not None else {}),
    )
    return factory.create(source="test root")


def authority_from(h: Hierarchy) -> SigningAuthority:
    return SigningAuthority.from_parts(
        signing_cert=h.signing,
        signing_key=h.signing_key,
        cert_chain=[h.signing, h.intermediate, h.root],
        roots=[h.root],
        source="test hierarchy",
    )


def leaf_csr(key: PrivateKey, *, uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> ParsedCsr:
    return parse_csr(make_csr(key, uris=uris, dns=dns), KeyPolicy())


def make_issuer(
    authority: SigningAuthority,
    clock: FakeClock,
    serials: Iterator[int] | None = None,
    **policy: object,
) -> Issuer:
    source = serials if serials is not None else itertools.count(1)
    return Issuer(
        authority=authority,
        policy=IssuancePolicy(**policy),  # type: ignore[arg-type]
        clock=clock,
        serials=lambda: next(source),
    )


def issue_leaf(issuer: Issuer, key: PrivateKey, ttl: int = 0, spiffe_id: SpiffeId = WEB) -> IssuedCertificate:
    return issuer.issue(spiffe_id=spiffe_id, csr=leaf_csr(key), requested_ttl_seconds=ttl)


def extension(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def cacerts_error(directory: Path) -> CaMaterialError:
    with pytest.raises(CaMaterialError) as caught:
        load_cacerts_dir(directory)
    assert caught.value.kind is ErrorKind.CONFIG
    assert isinstance(caught.value, ConfigError)
    return caught.value
