"""What the compliance document reads besides the ledger's queries: the keyring's certificates
(never its keys), the policies, the verify command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ca.audit import sources
from ca.ledger.store import sqlite_url
from tests.audit.test_document import config
from tests.support.compliance_mesh import ComplianceMesh, write_mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> ComplianceMesh:
    directory = tmp_path_factory.mktemp("mesh")
    return write_mesh(
        sqlite_url(directory / "state" / "ledger.db"), directory / "state", directory / "policies"
    )


def test_the_keyrings_certificates_are_read_without_its_keys(mesh: ComplianceMesh, tmp_path: Path) -> None:
    copy = tmp_path / "state" / "ca-slots"
    copy.mkdir(parents=True)
    for path in (mesh.state / "ca-slots").iterdir():
        if not path.name.endswith("key.pem"):
            (copy / path.name).write_bytes(path.read_bytes())
    found = sources.keyring_certificates(tmp_path / "state")
    assert found.problem is None and found.slots is not None
    assert [(s.id, s.state.value) for s in found.slots] == [("1", "retiring"), ("2", "active")]


def test_no_keyring_says_where_it_looked_and_what_to_give(tmp_path: Path) -> None:
    found = sources.keyring_certificates(tmp_path)
    assert found.slots is None
    assert found.problem is not None and str(tmp_path / "ca-slots") in found.problem
    assert "--state-dir" in found.problem


def test_a_damaged_keyring_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "ca-slots").mkdir()
    (tmp_path / "ca-slots" / "slots.json").write_text('{"format": 1, "slots": [{"id": "1"}]}')
    found = sources.keyring_certificates(tmp_path)
    assert found.slots is None and found.problem is not None and "damaged" in found.problem


def test_policies_only_when_asked(mesh: ComplianceMesh) -> None:
    asked = sources.policies(config(mesh))
    assert asked.source == str(mesh.policies)
    assert sorted(str(p.ref) for p in asked.policies) == [
        "istio-system/default",
        "legacy/default",
        "shop/cart-metrics",
    ]
    assert sources.policies(dataclasses.replace(config(mesh), policies=None)).source is None


def test_the_verify_command_names_what_the_report_used(mesh: ComplianceMesh, tmp_path: Path) -> None:
    cfg = config(mesh, "--ledger-key", str(tmp_path / "pub.pem"), "--kubeconfig", str(tmp_path / "kc"))
    assert sources.verify_command(cfg) == (
        "meshca", "audit", "verify",
        "--ledger", f"sqlite:///{mesh.state}/ledger.db",
        "--state-dir", str(mesh.state),
        "--ledger-key", str(tmp_path / "pub.pem"),
        "--kubeconfig", str(tmp_path / "kc"), "--ca-namespace", "istio-system",
    )  # fmt: skip
    secret = dataclasses.replace(cfg, ledger_url="postgresql://audit:s3cret@db:5432/ledger")
    assert "s3cret" not in " ".join(sources.verify_command(secret))
