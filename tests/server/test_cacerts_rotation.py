"""Plugged-in CA material rotates without a restart: new files in the cacerts directory are a
prepared slot, published, then activated; the keyring survives a restart."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cryptography import x509

from tests.support.ca_server import start_ca
from tests.support.clock import FakeClock
from tests.support.pki import make_hierarchy, pem


def test_new_cacerts_files_are_prepared_published_then_activated_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    first = make_hierarchy(clock.now())
    cacerts = first.write_cacerts(tmp_path / "cacerts")
    flags = ("--cacerts", str(cacerts), "--ca-root-publish", "10m")
    ca = start_ca(tmp_path / "state", *flags, clock=clock)
    try:
        keys = ca.server.keys
        assert keys is not None
        ca.server._watch_cacerts()
        assert keys.keyring.prepared is None  # the same files: nothing to do

        second = make_hierarchy(clock.now())
        second.write_cacerts(cacerts)
        (cacerts / "root-cert.pem").write_bytes(pem(second.root) + pem(first.root))
        ca.server._watch_cacerts()
        prepared = keys.keyring.prepared
        assert prepared is not None and prepared.signing_cert == second.signing
        assert set(x509.load_pem_x509_certificates(ca.bundle)) == {first.root, second.root}
        assert ca.server.issuer.authority.signing_cert == first.signing  # published, not signing

        ca.server._ca_keys_turn()
        assert keys.keyring.prepared is not None  # the new root waits its publishing time
        clock.advance(timedelta(minutes=10))
        ca.server._ca_keys_turn()
        assert keys.keyring.active.signing_cert == second.signing
        assert ca.server.issuer.authority.signing_cert == second.signing
        assert [str(s.state) for s in keys.keyring.slots] == ["retiring", "active"]
        ca.server._watch_cacerts()
        assert len(keys.keyring.slots) == 2  # taken once
    finally:
        ca.stop()

    again = start_ca(tmp_path / "state", *flags, clock=clock)
    try:
        assert again.server.keys is not None
        assert [str(s.state) for s in again.server.keys.keyring.slots] == ["retiring", "active"]
        assert again.server.issuer.authority.signing_cert == second.signing
        assert set(x509.load_pem_x509_certificates(again.bundle)) == {first.root, second.root}
    finally:
        again.stop()


def test_files_that_do_not_form_a_ca_are_not_taken_and_signing_goes_on(tmp_path: Path) -> None:
    clock = FakeClock()
    first = make_hierarchy(clock.now())
    cacerts = first.write_cacerts(tmp_path / "cacerts")
    ca = start_ca(tmp_path / "state", "--cacerts", str(cacerts), clock=clock)
    try:
        other = make_hierarchy(clock.now())
        (cacerts / "ca-key.pem").write_bytes((cacerts / "ca-key.pem").read_bytes())
        (cacerts / "ca-cert.pem").write_bytes(pem(other.signing))  # a key that is not its pair
        ca.server._watch_cacerts()
        assert ca.server.keys is not None and ca.server.keys.keyring.prepared is None
        assert ca.server.issuer.authority.signing_cert == first.signing
    finally:
        ca.stop()
