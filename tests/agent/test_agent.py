"""The agent's pure core: renewal timing, backoff, response validation, the attempt loop."""

from __future__ import annotations

import logging
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca.agent.agent import MIN_INTERVAL, Agent, AgentSettings, Replacement, held_before_restart
from ca.agent.output import read_leaf, write_svid
from ca.agent.schedule import AGENT_BACKOFF, RenewalPolicy
from ca.agent.svid import BadResponseError, Svid, accept_response
from ca.errors import ConfigError, UnavailableError
from ca.issuance.cert_dir import CERT_CHAIN, DATA_LINK, KEY, ROOT_CERT
from ca.issuance.csr import parse_csr
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.keys import KeyAlgorithm, PrivateKey, generate_private_key
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_csr
from tests.support.svids import CART, FakeCa, make_svid


class RecordingSink:
    def __init__(self) -> None:
        self.published: list[Svid] = []

    def publish(self, svid: Svid) -> None:
        self.published.append(svid)


def _agent(
    clock: FakeClock, ca: FakeCa, sink: RecordingSink, *, ttl: timedelta = timedelta(hours=1)
) -> Agent:
    settings = AgentSettings(
        trust_domain="cluster.local",
        key_type=KeyAlgorithm.EC_P256,
        ttl=ttl,
        renewal=RenewalPolicy(ratio=0.5, jitter=0.0),
        backoff=AGENT_BACKOFF,
        expected_identity=lambda: CART,
    )
    return Agent(
        settings=settings,
        source=ca,
        sinks=[sink],
        clock=clock,
        random=lambda: 0.5,
        generate_key=generate_private_key,
    )


def test_renewal_at_half_of_the_remaining_life_with_bounded_jitter() -> None:
    clock = FakeClock()
    start, end = clock.now(), clock.now() + timedelta(hours=24)
    policy = RenewalPolicy(ratio=0.5, jitter=0.01)
    assert policy.renew_at(start, end, lambda: 0.5) == start + timedelta(hours=12)
    assert policy.renew_at(start, end, lambda: 0.0) == start + timedelta(hours=24) * 0.49
    assert policy.renew_at(start, end, lambda: 0.999999) < start + timedelta(hours=24) * 0.51


@pytest.mark.parametrize(("ratio", "jitter"), [(0.0, 0.01), (1.0, 0.0), (0.9, 0.1), (0.5, -0.1)])
def test_bad_renewal_settings_are_config_errors(ratio: float, jitter: float) -> None:
    with pytest.raises(ConfigError):
        RenewalPolicy(ratio=ratio, jitter=jitter)


def test_backoff_doubles_from_half_a_second_up_to_a_minute() -> None:
    full = [AGENT_BACKOFF.delay_s(n, lambda: 0.999999) for n in range(10)]
    assert full[0] == pytest.approx(0.5, abs=0.001)
    assert full[1] == pytest.approx(1.0, abs=0.001)
    assert max(full) <= 60.0
    assert AGENT_BACKOFF.delay_s(1000, lambda: 0.0) == 30.0


def test_accepts_a_valid_response_and_refuses_bad_ones() -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    key = ec_key()
    chain = ca.issuer.issue(
        spiffe_id=CART, csr=parse_csr(make_csr(key), KeyPolicy()), requested_ttl_seconds=0
    ).chain
    svid = accept_response(chain, key, trust_domain="cluster.local", expected=CART, now=clock.now())
    assert svid.spiffe_id == CART

    cases: list[tuple[list[str], PrivateKey, str, SpiffeId | None, str]] = [
        (chain, ec_key(), "cluster.local", CART, "different key"),
        (chain, key, "other.domain", None, "outside trust domain"),
        (
            chain,
            key,
            "cluster.local",
            SpiffeId.for_workload("cluster.local", "shop", "web"),
            "this workload is",
        ),
        (chain[:1], key, "cluster.local", CART, "element"),
        (
            [chain[0], FakeCa(clock).issuer.authority.trust_bundle_pem()],
            key,
            "cluster.local",
            CART,
            "validate",
        ),
        (["garbage", chain[1]], key, "cluster.local", CART, "parsed"),
    ]
    for pems, held_key, domain, expected, words in cases:
        with pytest.raises(BadResponseError) as caught:
            accept_response(pems, held_key, trust_domain=domain, expected=expected, now=clock.now())
        assert words in str(caught.value)


def test_an_expired_chain_is_refused() -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    key = ec_key()
    chain = ca.issuer.issue(
        spiffe_id=CART, csr=parse_csr(make_csr(key), KeyPolicy()), requested_ttl_seconds=60
    ).chain
    with pytest.raises(BadResponseError):
        accept_response(
            chain, key, trust_domain="cluster.local", expected=CART, now=clock.now() + timedelta(hours=1)
        )


def test_attempt_publishes_and_schedules_renewal_at_half_life() -> None:
    clock, sink = FakeClock(), RecordingSink()
    ca = FakeCa(clock)
    agent = _agent(clock, ca, sink)
    next_at = agent.attempt()
    assert len(sink.published) == 1 and agent.current is sink.published[0]
    assert next_at == clock.now() + timedelta(minutes=30)
    assert ca.calls == [3600]


def test_failures_back_off_and_keep_the_last_good_certificate() -> None:
    clock, sink = FakeClock(), RecordingSink()
    ca = FakeCa(clock)
    agent = _agent(clock, ca, sink)
    agent.attempt()
    good = agent.current
    ca.fail_with = UnavailableError("CA down", reason="unavailable")
    delays = []
    for _ in range(4):
        delays.append(agent.attempt() - clock.now())
    assert agent.current is good and len(sink.published) == 1
    assert delays == sorted(delays) and delays[0] < delays[-1] <= timedelta(seconds=60)
    assert agent.consecutive_failures == 4
    ca.fail_with = None
    agent.attempt()
    assert agent.current is not good and agent.consecutive_failures == 0 and len(sink.published) == 2


def test_a_chain_for_another_key_is_never_published() -> None:
    clock, sink = FakeClock(), RecordingSink()
    ca = FakeCa(clock)
    agent = _agent(clock, ca, sink)
    ca.swap_key = True
    agent.attempt()
    assert sink.published == [] and agent.current is None
    assert agent.last_error is not None and "different key" in str(agent.last_error)


def test_short_lived_certificates_never_renew_in_a_hot_loop() -> None:
    clock, sink = FakeClock(), RecordingSink()
    agent = _agent(clock, FakeCa(clock), sink, ttl=timedelta(seconds=1))
    assert agent.attempt() - clock.now() >= MIN_INTERVAL


def test_output_files_switch_together_and_the_key_is_private(tmp_path: Path) -> None:
    clock = FakeClock()
    first, second = make_svid(clock), make_svid(clock)
    write_svid(tmp_path, first)
    old_version = tmp_path / os.readlink(tmp_path / DATA_LINK)
    write_svid(tmp_path, second)
    assert (tmp_path / CERT_CHAIN).read_bytes() == second.chain_pem()
    assert (tmp_path / KEY).read_bytes() == second.key_pem()
    assert (tmp_path / ROOT_CERT).read_bytes() == second.roots_pem()
    assert stat.S_IMODE((tmp_path / KEY).stat().st_mode) == 0o600
    assert not old_version.exists()
    leaf = x509.load_pem_x509_certificate((tmp_path / CERT_CHAIN).read_bytes())
    assert leaf.public_key() == second.key.public_key()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("..")) == [
        CERT_CHAIN,
        KEY,
        ROOT_CERT,
    ]


def test_output_replaces_plain_files_left_by_another_writer(tmp_path: Path) -> None:
    for name in (CERT_CHAIN, KEY, ROOT_CERT):
        (tmp_path / name).write_text("stale")
    svid = make_svid(FakeClock())
    write_svid(tmp_path, svid)
    assert (tmp_path / KEY).read_bytes() == svid.key_pem()


def test_the_first_certificate_is_logged_as_issued_and_later_ones_as_rotated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, sink = FakeClock(), RecordingSink()
    agent = _agent(clock, FakeCa(clock), sink)
    caplog.set_level(logging.INFO, logger="meshca.agent")
    agent.attempt()
    first = sink.published[0].leaf.serial_number
    agent.attempt()
    second = sink.published[1].leaf.serial_number
    records = [r for r in caplog.records if r.name == "meshca.agent"]
    assert [r.getMessage() for r in records] == ["certificate issued", "certificate rotated"]
    issued, rotated = (vars(r) for r in records)
    assert issued["serial"] == format(first, "x") and "replaced_serial" not in issued
    assert rotated["serial"] == format(second, "x")
    assert rotated["replaced_serial"] == format(first, "x")


def test_an_order_to_replace_goes_with_the_next_request_until_one_succeeds() -> None:
    clock = FakeClock()
    ca, sink = FakeCa(clock), RecordingSink()
    agent = _agent(clock, ca, sink)
    agent.attempt()
    agent.replace_for(Replacement(order_id="ro-0123456789ab", serial="a1"))
    ca.fail_with = UnavailableError("down", reason="unavailable")
    agent.attempt()
    ca.fail_with = None
    agent.attempt()
    agent.attempt()
    ordered = {"meshca-order": "ro-0123456789ab", "meshca-replaces": "a1"}
    assert ca.metadata == [{}, ordered, ordered, {}]


def test_a_restarted_agent_asks_for_its_first_certificate_as_the_replacement_of_the_one_it_wrote(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    ca, sink = FakeCa(clock), RecordingSink()
    before = make_svid(clock, ca)
    write_svid(tmp_path, before)
    agent = _agent(clock, ca, sink)
    agent.resume(read_leaf(tmp_path))
    ca.fail_with = UnavailableError("down", reason="unavailable")
    agent.attempt()
    ca.fail_with = None
    agent.attempt()
    agent.attempt()
    held = {"meshca-replaces": format(before.leaf.serial_number, "x")}  # no order: none was heard of
    assert ca.metadata == [held, held, {}]


def test_a_restart_names_only_a_certificate_of_the_agents_own_identity(tmp_path: Path) -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    mine = make_svid(clock, ca).leaf
    web = SpiffeId.for_workload("cluster.local", "shop", "web")
    theirs = x509.load_pem_x509_certificate(
        ca.issuer.issue(
            spiffe_id=web, csr=parse_csr(make_csr(ec_key()), KeyPolicy()), requested_ttl_seconds=0
        )
        .chain[0]
        .encode()
    )
    assert held_before_restart(mine, CART) == Replacement(serial=format(mine.serial_number, "x"))
    assert held_before_restart(theirs, CART) is None
    assert held_before_restart(mine, None) is None  # no token to say whose it should be
    assert held_before_restart(None, CART) is None


def test_the_certificate_last_written_is_read_back_and_anything_else_is_none(tmp_path: Path) -> None:
    assert read_leaf(tmp_path / "missing") is None
    svid = make_svid(FakeClock())
    write_svid(tmp_path, svid)
    assert read_leaf(tmp_path) == svid.leaf
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / CERT_CHAIN).write_text("not a certificate")
    assert read_leaf(tmp_path / "plain") is None


def test_a_replacement_without_an_order_says_only_what_it_replaces() -> None:
    assert Replacement(serial="a1").metadata() == (("meshca-replaces", "a1"),)
