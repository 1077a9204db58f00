"""The policy set: it counts real changes and notifies its listeners."""

from __future__ import annotations

from ca.policy.model import MtlsMode
from ca.policy.policy_set import PolicySet
from tests.support.policies import policy


def test_policy_set_counts_real_changes_and_notifies() -> None:
    policies = PolicySet()
    calls: list[int] = []
    unsubscribe = policies.subscribe(lambda: calls.append(policies.generation))
    strict = policy("shop", "default", MtlsMode.STRICT)
    assert policies.upsert(strict) and policies.generation == 1
    assert not policies.upsert(strict) and policies.generation == 1  # same value: no change
    assert policies.replace([strict, policy("istio-system", "default", MtlsMode.DISABLE)])
    assert [str(p.ref) for p in policies.snapshot()] == ["istio-system/default", "shop/default"]
    assert policies.delete(strict.ref)
    assert not policies.delete(strict.ref)
    assert calls == [1, 2, 3]
    unsubscribe()
    policies.replace([])
    assert calls == [1, 2, 3]
