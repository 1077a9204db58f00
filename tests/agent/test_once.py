"""`meshca agent --once on`: retried on the agent's backoff while the CA cannot be reached, up to
`--once-timeout`; errors that waiting cannot cure end it at once. The clock is driven by the
fake sleep: no test here waits for time to pass."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from ca.agent.agent import Agent, AgentSettings
from ca.agent.ca_client import CaRefusedError, TokenUnavailableError
from ca.agent.ca_tls import CaNotTrustedError
from ca.agent.once import NoCertificateError, fetch_once
from ca.agent.schedule import AGENT_BACKOFF, RenewalPolicy
from ca.agent.settings import agent_config
from ca.agent.svid import Svid
from ca.cli.main import build_parser
from ca.errors import ConfigError, ErrorKind, MeshcaError, UnavailableError
from ca.issuance.keys import KeyAlgorithm, generate_private_key
from tests.support.clock import FakeClock
from tests.support.svids import CART, FakeCa

TIMEOUT = timedelta(seconds=60)


def unreachable() -> UnavailableError:
    return UnavailableError("cannot reach the CA at ca:15012 (connection refused)", reason="unavailable")


class ScriptedCa:
    """Fails with each of `failures` in turn, then issues; records the clock at each call."""

    def __init__(self, clock: FakeClock, failures: list[MeshcaError]) -> None:
        self._clock = clock
        self._ca = FakeCa(clock)
        self._failures = list(failures)
        self.called_at: list[float] = []
        self._start = clock.now()

    def create_certificate(
        self, csr_pem: str, ttl_seconds: int, *, metadata: Sequence[tuple[str, str]] = ()
    ) -> list[str]:
        self.called_at.append((self._clock.now() - self._start).total_seconds())
        if self._failures:
            raise self._failures.pop(0)
        return self._ca.create_certificate(csr_pem, ttl_seconds)


class FakeSleep:
    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self._clock.advance(timedelta(seconds=seconds))


def once(clock: FakeClock, ca: object, timeout: timedelta = TIMEOUT) -> tuple[Svid, FakeSleep]:
    sleep = FakeSleep(clock)
    agent = Agent(
        settings=AgentSettings(
            trust_domain="cluster.local",
            key_type=KeyAlgorithm.EC_P256,
            ttl=timedelta(hours=1),
            renewal=RenewalPolicy(),
            backoff=AGENT_BACKOFF,
            expected_identity=lambda: CART,
        ),
        source=ca,  # type: ignore[arg-type]
        sinks=[],
        clock=clock,
        random=lambda: 1.0,  # the full backoff step: 0.5 s, 1 s, 2 s, ...
        generate_key=generate_private_key,
    )
    return fetch_once(agent, timeout=timeout, clock=clock, sleep=sleep), sleep


def test_a_ca_that_comes_up_is_waited_for_on_the_agents_backoff() -> None:
    clock = FakeClock()
    ca = ScriptedCa(clock, [unreachable(), unreachable(), unreachable()])
    svid, sleep = once(clock, ca)
    assert svid.spiffe_id == CART
    assert sleep.waits == [0.5, 1.0, 2.0]
    assert ca.called_at == [0.0, 0.5, 1.5, 3.5]


def test_a_ca_that_stays_down_fails_at_the_timeout_with_the_last_error() -> None:
    clock = FakeClock()
    ca = ScriptedCa(clock, [unreachable()] * 100)
    with pytest.raises(NoCertificateError) as failed:
        once(clock, ca)
    # 0.5 + 1 + ... + 32 = 63.5 s would pass the minute: the last wait stops at it.
    assert ca.called_at == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 60.0]
    assert failed.value.kind is ErrorKind.UNAVAILABLE  # exit 1
    assert str(failed.value) == (
        "no certificate written after 8 attempts in 1m (--once-timeout): "
        "cannot reach the CA at ca:15012 (connection refused)"
    )


def test_a_zero_timeout_makes_one_attempt() -> None:
    clock = FakeClock()
    ca = ScriptedCa(clock, [unreachable()])
    with pytest.raises(NoCertificateError, match="after 1 attempt in 0s"):
        once(clock, ca, timeout=timedelta(0))
    assert ca.called_at == [0.0]


@pytest.mark.parametrize(
    "error",
    [
        CaRefusedError(
            "the CA at ca:15012 answered UNAUTHENTICATED: token expired", reason="unauthenticated"
        ),
        CaRefusedError("the CA at ca:15012 answered PERMISSION_DENIED: no", reason="permission_denied"),
        CaRefusedError("the CA at ca:15012 answered INVALID_ARGUMENT: bad CSR", reason="invalid_argument"),
        CaNotTrustedError("the CA's certificate does not chain to --ca-root", reason="ca_untrusted"),
        TokenUnavailableError("cannot read the service-account token", reason="token_missing"),
    ],
    ids=lambda err: err.reason,
)
def test_errors_that_waiting_cannot_cure_fail_at_once(error: MeshcaError) -> None:
    clock = FakeClock()
    ca = ScriptedCa(clock, [error])
    with pytest.raises(NoCertificateError) as failed:
        once(clock, ca)
    assert ca.called_at == [0.0]
    assert str(failed.value) == f"no certificate written: {error}"
    assert failed.value.kind is error.kind  # a --ca-root that does not match exits 2


def test_an_answer_the_agent_will_not_use_is_not_retried() -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    ca.swap_key = True
    with pytest.raises(NoCertificateError, match="different key"):
        once(clock, ca)
    assert len(ca.calls) == 1


def test_once_timeout_flag_and_environment() -> None:
    assert agent_config(build_parser({}).parse_args(["agent"])).once_timeout == timedelta(seconds=60)
    given = build_parser({}).parse_args(["agent", "--once-timeout", "90s"])
    assert agent_config(given).once_timeout == timedelta(seconds=90)
    from_env = build_parser({"MESHCA_ONCE_TIMEOUT": "2m"}).parse_args(["agent"])
    assert agent_config(from_env).once_timeout == timedelta(minutes=2)
    with pytest.raises(ConfigError, match="not a duration"):
        agent_config(build_parser({}).parse_args(["agent", "--once-timeout", "soon"]))
