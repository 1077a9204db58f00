"""The certificate files the enforcer serves with: read as one issuance, versioned, checked."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ca.agent.output import write_svid
from ca.enforce.material import check_material, read_files, version_of
from ca.errors import ConfigError
from tests.support.clock import FakeClock
from tests.support.svids import make_svid


def test_the_agents_files_are_read_as_one_issuance(tmp_path: Path) -> None:
    clock = FakeClock()
    assert version_of(tmp_path) is None
    svid = make_svid(clock)
    write_svid(tmp_path, svid)
    version, files = read_files(tmp_path)
    assert version.startswith("link:..")
    material = check_material(files, version=version, trust_domain="cluster.local", now=clock.now())
    assert material.serial == svid.leaf.serial_number
    assert material.spiffe_id == svid.spiffe_id
    assert "key_pem" not in repr(material)  # the key never reaches a log line
    write_svid(tmp_path, make_svid(clock))
    assert version_of(tmp_path) != version


def test_plain_files_are_versioned_by_their_stamps(tmp_path: Path) -> None:
    svid = make_svid(FakeClock())
    (tmp_path / "cert-chain.pem").write_bytes(svid.chain_pem())
    (tmp_path / "key.pem").write_bytes(svid.key_pem())
    (tmp_path / "root-cert.pem").write_bytes(svid.roots_pem())
    version = version_of(tmp_path)
    assert version is not None and version.startswith("files:")


@pytest.mark.parametrize("problem", ["other key", "other trust domain", "expired", "garbage"])
def test_unusable_files_are_refused_with_the_reason(problem: str) -> None:
    clock = FakeClock()
    svid = make_svid(clock)
    files = {"cert-chain.pem": svid.chain_pem(), "key.pem": svid.key_pem(), "root-cert.pem": svid.roots_pem()}
    trust_domain, now = "cluster.local", clock.now()
    if problem == "other key":
        files["key.pem"] = make_svid(clock).key_pem()
        match = "does not belong"
    elif problem == "other trust domain":
        trust_domain, match = "example.org", "outside trust domain"
    elif problem == "expired":
        now, match = now + timedelta(days=365), "expired"
    else:
        files["cert-chain.pem"], match = b"not pem", "do not parse"
    with pytest.raises(ConfigError, match=match):
        check_material(files, version="v", trust_domain=trust_domain, now=now)
