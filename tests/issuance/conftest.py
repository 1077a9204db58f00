"""Keys, a fake clock and a root shared by the issuance tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.issuance.authority import SigningAuthority
from ca.issuance.keys import PrivateKey
from tests.support.clock import FakeClock
from tests.support.issuing import make_root
from tests.support.pki import Hierarchy, make_hierarchy, rsa_key


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def rsa_ca_key() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def leaf_keys(rsa2048: rsa.RSAPrivateKey) -> dict[str, PrivateKey]:
    return {
        "ec-p256": ec.generate_private_key(ec.SECP256R1()),
        "ec-p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa-2048": rsa2048,
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def serials() -> Iterator[int]:
    return itertools.count(1001)


@pytest.fixture
def root(clock: FakeClock) -> SigningAuthority:
    return make_root(clock)


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return make_hierarchy()
