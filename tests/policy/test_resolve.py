"""Istio's PeerAuthentication resolution: a table of cases plus properties."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.policy.model import Decision, MtlsMode, PeerAuthentication, PolicyRef, Workload
from ca.policy.resolve import candidates, resolve, resolve_ports, resolve_workload

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STRICT, PERMISSIVE, DISABLE, UNSET = MtlsMode.STRICT, MtlsMode.PERMISSIVE, MtlsMode.DISABLE, MtlsMode.UNSET
WEB = Workload("shop", {"app": "web", "version": "v1"})


def pa(
    namespace: str,
    name: str,
    mode: MtlsMode = STRICT,
    *,
    selector: Mapping[str, str] | None = None,
    ports: Mapping[int, MtlsMode] | None = None,
    age_s: int = 0,
) -> PeerAuthentication:
    """A policy created `age_s` seconds after T0 (bigger = younger)."""
    return PeerAuthentication(
        ref=PolicyRef(namespace, name),
        created=T0 + timedelta(seconds=age_s),
        selector=selector,
        mode=mode,
        port_modes=dict(ports or {}),
    )


def mesh(mode: MtlsMode = STRICT, name: str = "default", age_s: int = 0) -> PeerAuthentication:
    return pa("istio-system", name, mode, age_s=age_s)


def ns(mode: MtlsMode = STRICT, name: str = "default", age_s: int = 0) -> PeerAuthentication:
    return pa("shop", name, mode, age_s=age_s)


def wl(
    mode: MtlsMode = STRICT,
    name: str = "web",
    *,
    ports: Mapping[int, MtlsMode] | None = None,
    age_s: int = 0,
    selector: Mapping[str, str] | None = None,
) -> PeerAuthentication:
    return pa("shop", name, mode, selector=selector or {"app": "web"}, ports=ports, age_s=age_s)


@dataclass(frozen=True)
class Case:
    id: str
    policies: list[PeerAuthentication]
    port: int | None
    mode: MtlsMode
    level: str
    decided_by: str | None
    workload: Workload = WEB
    root_namespace: str = "istio-system"


CASES = [
    Case("no policy: permissive by default", [], 8080, PERMISSIVE, "default", None),
    Case("mesh strict", [mesh(STRICT)], 8080, STRICT, "mesh", "istio-system/default"),
    Case("mesh disable", [mesh(DISABLE)], None, DISABLE, "mesh", "istio-system/default"),
    Case("mesh unset: default", [mesh(UNSET)], 8080, PERMISSIVE, "default", None),
    Case(
        "namespace overrides mesh",
        [mesh(STRICT), ns(PERMISSIVE)],
        8080,
        PERMISSIVE,
        "namespace",
        "shop/default",
    ),
    Case(
        "namespace unset inherits mesh",
        [mesh(DISABLE), ns(UNSET)],
        8080,
        DISABLE,
        "mesh",
        "istio-system/default",
    ),
    Case("namespace unset, no mesh: default", [ns(UNSET)], 8080, PERMISSIVE, "default", None),
    Case("workload overrides namespace", [ns(STRICT), wl(DISABLE)], 8080, DISABLE, "workload", "shop/web"),
    Case(
        "workload unset inherits namespace",
        [ns(STRICT), wl(UNSET)],
        8080,
        STRICT,
        "namespace",
        "shop/default",
    ),
    Case(
        "workload unset, namespace unset, inherits mesh",
        [mesh(STRICT), ns(UNSET), wl(UNSET)],
        None,
        STRICT,
        "mesh",
        "istio-system/default",
    ),
    Case("workload unset alone: default", [wl(UNSET)], 8080, PERMISSIVE, "default", None),
    Case(
        "port level overrides workload",
        [mesh(STRICT), wl(STRICT, ports={8080: DISABLE})],
        8080,
        DISABLE,
        "port",
        "shop/web",
    ),
    Case(
        "other ports keep the workload mode",
        [mesh(PERMISSIVE), wl(STRICT, ports={8080: DISABLE})],
        9090,
        STRICT,
        "workload",
        "shop/web",
    ),
    Case(
        "workload row (port None) ignores port levels",
        [wl(STRICT, ports={8080: DISABLE})],
        None,
        STRICT,
        "workload",
        "shop/web",
    ),
    Case(
        "port unset inherits the workload mode",
        [ns(DISABLE), wl(STRICT, ports={8080: UNSET})],
        8080,
        STRICT,
        "workload",
        "shop/web",
    ),
    Case(
        "port unset with workload unset inherits namespace",
        [ns(STRICT), wl(UNSET, ports={8080: UNSET})],
        8080,
        STRICT,
        "namespace",
        "shop/default",
    ),
    Case(
        "port level with workload unset",
        [ns(STRICT), wl(UNSET, ports={8080: PERMISSIVE})],
        8080,
        PERMISSIVE,
        "port",
        "shop/web",
    ),
    Case(
        "oldest mesh policy wins",
        [mesh(STRICT, "b-new", age_s=10), mesh(DISABLE, "z-old", age_s=0)],
        8080,
        DISABLE,
        "mesh",
        "istio-system/z-old",
    ),
    Case(
        "oldest namespace policy wins",
        [ns(STRICT, "a-young", age_s=5), ns(PERMISSIVE, "z-old", age_s=1)],
        8080,
        PERMISSIVE,
        "namespace",
        "shop/z-old",
    ),
    Case(
        "same age: smaller name wins",
        [ns(STRICT, "beta"), ns(DISABLE, "alpha")],
        8080,
        DISABLE,
        "namespace",
        "shop/alpha",
    ),
    Case(
        "oldest workload policy wins, with its port levels",
        [
            wl(DISABLE, "young", ports={8080: PERMISSIVE}, age_s=60),
            wl(STRICT, "old", ports={9090: DISABLE}, age_s=1, selector={"version": "v1"}),
        ],
        8080,
        STRICT,
        "workload",
        "shop/old",
    ),
    Case(
        "younger workload policy's port levels are not merged in",
        [wl(STRICT, "old", age_s=0), wl(STRICT, "young", ports={8080: DISABLE}, age_s=9)],
        8080,
        STRICT,
        "workload",
        "shop/old",
    ),
    Case(
        "an unset winner inherits, it does not fall back to the next in scope",
        [mesh(DISABLE), ns(UNSET, "old", age_s=0), ns(STRICT, "young", age_s=5)],
        8080,
        DISABLE,
        "mesh",
        "istio-system/default",
    ),
    Case(
        "selector policy in the root namespace is ignored",
        [pa("istio-system", "web-strict", STRICT, selector={"app": "web"})],
        8080,
        PERMISSIVE,
        "default",
        None,
    ),
    Case(
        "root-namespace selector policy ignored also for root-namespace workloads",
        [mesh(PERMISSIVE), pa("istio-system", "gw", STRICT, selector={"app": "gw"})],
        8080,
        PERMISSIVE,
        "mesh",
        "istio-system/default",
        workload=Workload("istio-system", {"app": "gw"}),
    ),
    Case(
        "custom root namespace: policies there are mesh-wide",
        [pa("mesh-root", "default", STRICT), mesh(DISABLE)],
        8080,
        STRICT,
        "mesh",
        "mesh-root/default",
        root_namespace="mesh-root",
    ),
    Case(
        "custom root namespace: istio-system is just another namespace",
        [mesh(STRICT)],
        8080,
        PERMISSIVE,
        "default",
        None,
        root_namespace="mesh-root",
    ),
    Case(
        "policy in another namespace is ignored",
        [pa("other", "default", STRICT), pa("other", "web", DISABLE, selector={"app": "web"})],
        8080,
        PERMISSIVE,
        "default",
        None,
    ),
    Case(
        "selector not matching is ignored",
        [ns(PERMISSIVE), wl(DISABLE, selector={"app": "db"})],
        8080,
        PERMISSIVE,
        "namespace",
        "shop/default",
    ),
    Case(
        "selector must match every label",
        [ns(PERMISSIVE), wl(DISABLE, selector={"app": "web", "version": "v2"})],
        8080,
        PERMISSIVE,
        "namespace",
        "shop/default",
    ),
    Case(
        "selector subset matches",
        [wl(DISABLE, selector={"version": "v1"})],
        8080,
        DISABLE,
        "workload",
        "shop/web",
    ),
    Case(
        "workload in the root namespace: its no-selector policy is the mesh policy",
        [mesh(STRICT)],
        8080,
        STRICT,
        "mesh",
        "istio-system/default",
        workload=Workload("istio-system", {"app": "gw"}),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_resolution_table(case: Case) -> None:
    decision = resolve(case.policies, case.workload, case.port, root_namespace=case.root_namespace)
    assert decision == Decision(
        port=case.port,
        mode=case.mode,
        level=case.level,  # type: ignore[arg-type]
        decided_by=_ref(case.decided_by),
    )


def _ref(text: str | None) -> PolicyRef | None:
    if text is None:
        return None
    namespace, name = text.split("/")
    return PolicyRef(namespace, name)


def test_resolve_ports_answers_each_port() -> None:
    policies = [mesh(STRICT), wl(UNSET, ports={8080: DISABLE, 9090: UNSET})]
    decisions = resolve_ports(policies, WEB, [8080, 9090, 15000], root_namespace="istio-system")
    assert {p: (d.mode, d.level) for p, d in decisions.items()} == {
        8080: (DISABLE, "port"),
        9090: (STRICT, "mesh"),
        15000: (STRICT, "mesh"),
    }
    assert all(d.port == p for p, d in decisions.items())


def test_candidates_lists_every_scope_winner_first() -> None:
    policies = [
        mesh(STRICT, "m2", age_s=2),
        mesh(STRICT, "m1", age_s=1),
        ns(UNSET, "n"),
        wl(STRICT, "w2", age_s=5),
        wl(STRICT, "w1", age_s=0),
        pa("istio-system", "root-sel", STRICT, selector={"app": "web"}),
        pa("other", "x", STRICT),
    ]
    found = candidates(policies, WEB)
    assert [p.ref.name for p in found.mesh] == ["m1", "m2"]
    assert [p.ref.name for p in found.namespace] == ["n"]
    assert [p.ref.name for p in found.workload] == ["w1", "w2"]
    assert [p.ref.name for p in found.ignored] == ["root-sel"]


def test_resolution_exposes_port_overrides() -> None:
    resolution = resolve_workload([wl(STRICT, ports={8080: DISABLE})], WEB)
    assert set(resolution.ports) == {8080}
    assert resolution.decision_for(1234).port == 1234
    assert resolution.decision_for(1234).mode is STRICT


# Properties over random policy sets.

NAMESPACES = ["istio-system", "shop", "other"]
LABELS = st.dictionaries(
    st.sampled_from(["app", "version", "tier"]), st.sampled_from(["web", "v1", "db"]), max_size=2
)
MODES = st.sampled_from(list(MtlsMode))
SELECTORS = st.dictionaries(
    st.sampled_from(["app", "version", "tier"]), st.sampled_from(["web", "v1", "db"]), min_size=1, max_size=2
)


@st.composite
def policy_sets(draw: st.DrawFn) -> list[PeerAuthentication]:
    count = draw(st.integers(0, 8))
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=count, max_size=count))
    policies: dict[PolicyRef, PeerAuthentication] = {}
    for name in names:
        namespace = draw(st.sampled_from(NAMESPACES))
        selector = draw(st.none() | SELECTORS)
        ports = (
            draw(st.dictionaries(st.sampled_from([80, 8080, 9090]), MODES, max_size=2)) if selector else {}
        )
        policy = pa(
            namespace, name, draw(MODES), selector=selector, ports=ports, age_s=draw(st.integers(0, 3))
        )
        policies[policy.ref] = policy
    return list(policies.values())


@settings(max_examples=300, deadline=None)
@given(policy_sets(), LABELS, st.sampled_from(NAMESPACES), st.sampled_from([None, 80, 8080, 9090]))
def test_never_unset_and_consistent(
    policies: list[PeerAuthentication], labels: dict[str, str], namespace: str, port: int | None
) -> None:
    decision = resolve(policies, Workload(namespace, labels), port)
    assert decision.mode is not UNSET
    assert (decision.level == "default") == (decision.decided_by is None)
    if decision.decided_by is not None:
        chosen = next(p for p in policies if p.ref == decision.decided_by)
        assert chosen.ref.namespace in (namespace, "istio-system")
        expected = chosen.port_modes[port] if decision.level == "port" and port is not None else chosen.mode
        assert expected is decision.mode


@settings(max_examples=300, deadline=None)
@given(policy_sets(), LABELS, st.sampled_from(NAMESPACES), st.randoms(use_true_random=False))
def test_input_order_does_not_matter(
    policies: list[PeerAuthentication], labels: dict[str, str], namespace: str, rnd: object
) -> None:
    workload = Workload(namespace, labels)
    shuffled = list(policies)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    for port in (None, 80, 8080, 9090):
        assert resolve(policies, workload, port) == resolve(shuffled, workload, port)
