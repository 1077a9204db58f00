"""A workload's policy from the set: cached per generation, safe across threads, cheap; loading once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ca.policy.model import MtlsMode
from ca.policy.policy_set import PolicySet
from ca.policy.source import WorkloadPolicy, load_policies_once
from tests.support.policies import WEB, manifest, policy


def test_workload_policy_follows_the_set_and_caches_per_generation() -> None:
    policies = PolicySet([policy("shop", "default", MtlsMode.STRICT)])
    decider = WorkloadPolicy(policies, WEB, root_namespace="istio-system")
    first = decider.decide(8080)
    assert first.mode is MtlsMode.STRICT and first.port == 8080
    assert decider.decide(8080) is first  # cached
    policies.upsert(policy("shop", "default", MtlsMode.PERMISSIVE))
    assert decider.decide(8080).mode is MtlsMode.PERMISSIVE
    assert decider.decide(9090).port == 9090


def test_workload_policy_is_safe_across_threads() -> None:
    policies = PolicySet()
    decider = WorkloadPolicy(policies, WEB)
    modes = [MtlsMode.STRICT, MtlsMode.PERMISSIVE]
    stop = threading.Event()
    errors: list[BaseException] = []

    def flip() -> None:
        for i in range(2000):
            policies.upsert(policy("shop", "default", modes[i % 2]))
        stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                assert decider.decide(8080).mode in modes
        except BaseException as err:
            errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    flip()
    for thread in readers:
        thread.join()
    assert not errors
    assert decider.decide(8080).mode is MtlsMode.PERMISSIVE  # the last write (i = 1999)


def test_decide_is_cheap() -> None:
    policies = PolicySet([policy("istio-system", "default", MtlsMode.STRICT)])
    decider = WorkloadPolicy(policies, WEB)
    decider.decide(8080)
    calls = 100_000
    started = time.perf_counter()
    for _ in range(calls):
        decider.decide(8080)
    per_call_ns = (time.perf_counter() - started) / calls * 1e9
    assert per_call_ns < 5_000, f"decide() takes {per_call_ns:.0f} ns"


def test_load_once_reports_invalid_files(policy_dir: Path) -> None:
    (policy_dir / "bad.yaml").write_text(manifest("shop", "x", "NOPE"))
    loaded = load_policies_once(str(policy_dir))
    assert {str(p.ref) for p in loaded.policies} == {"istio-system/default", "shop/web"}
    (invalid,) = loaded.invalid
    assert "bad.yaml" in invalid.error and invalid.namespaces == frozenset({"shop"})
