"""The compliance document's model: built by ca.audit.sources.gather from a week of a small
mesh's ledger, its keyring and its policies (tests/support/compliance_mesh), each section holds
what that week put there; and the pure pieces (lifetime bars, days, mTLS resolution per
namespace) on their own."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca.audit import document as doc
from ca.audit.document import ComplianceDocument, LifetimeBar, PoliciesFound
from ca.audit.settings import AuditConfig, audit_config
from ca.audit.sources import gather
from ca.cli.main import parse_command_line
from ca.errors import LedgerTamperedError
from ca.ledger.compliance import DayCount
from ca.ledger.entries import timestamp
from ca.ledger.reader import open_reader
from ca.ledger.store import LedgerStore, sqlite_url
from ca.policy.model import InvalidPolicy, MtlsMode, PeerAuthentication, PolicyRef
from tests.support.compliance_mesh import MAX_TTL, ORDER_ID, REPORT_AT, T0, ComplianceMesh, write_mesh
from tests.support.ledger import sql

SHOP_CART = "spiffe://cluster.local/ns/shop/sa/cart"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> ComplianceMesh:
    directory = tmp_path_factory.mktemp("mesh")
    return write_mesh(
        sqlite_url(directory / "state" / "ledger.db"), directory / "state", directory / "policies"
    )


def config(mesh: ComplianceMesh, *flags: str) -> AuditConfig:
    argv = [
        "audit",
        "report",
        "--state-dir",
        str(mesh.state),
        "--at",
        REPORT_AT.isoformat(),
        "--max-ttl",
        MAX_TTL,
        "--format",
        "html",
        "--policies",
        str(mesh.policies),
        *flags,
    ]
    return audit_config(parse_command_line(argv, {}), REPORT_AT)


def build(cfg: AuditConfig) -> ComplianceDocument:
    reader = open_reader(cfg.ledger_url)
    try:
        return doc.build_document(gather(cfg, reader))
    finally:
        reader.dispose()


@pytest.fixture(scope="module")
def document(mesh: ComplianceMesh) -> ComplianceDocument:
    return build(config(mesh))


def test_the_summary_by_namespace(document: ComplianceDocument) -> None:
    summary = document.summary
    assert (summary.issued, summary.refused, summary.identities, summary.live) == (128, 36, 9, 23)
    by_name = {n.namespace: n for n in summary.namespaces}
    assert list(by_name) == ["legacy", "monitoring", "payments", "shop", "web", doc.NO_NAMESPACE]
    shop = by_name["shop"]
    assert (shop.identities, shop.identities_live, shop.issued, shop.live) == (3, 2, 63, 5)
    assert by_name[doc.NO_NAMESPACE].refused == 32
    assert [d.issued for d in summary.days] == [18] * 6 + [20]


def test_the_period(document: ComplianceDocument, mesh: ComplianceMesh) -> None:
    assert document.period.since is None
    assert document.period.at == timestamp(REPORT_AT)
    assert document.period.text == f"the first entry to {REPORT_AT:%Y-%m-%d %H:%M} UTC (report time)"
    narrowed = build(config(mesh, "--since", (T0 + timedelta(days=2)).isoformat(), "--namespace", "shop"))
    assert narrowed.period.filters == ("--namespace shop",)
    assert [d.day for d in narrowed.summary.days] == [f"2026-11-{n}" for n in range(16, 21)]
    assert {n.namespace for n in narrowed.summary.namespaces} == {"shop"}


def test_lifetimes_against_the_maximum(document: ComplianceDocument) -> None:
    lifetimes = document.lifetimes
    assert lifetimes.max_ttl == "1d"
    assert lifetimes.bars == (
        LifetimeBar(label="1h", count=28, over_max=False),
        LifetimeBar(label="1d", count=86, over_max=False),
        LifetimeBar(label="2d", count=7, over_max=True),
        LifetimeBar(label="7d", count=7, over_max=True),
    )
    assert lifetimes.over_max == 14
    assert (lifetimes.shortest, lifetimes.longest) == ("1h", "7d")
    assert [(k.key_type, k.count, k.allowed) for k in lifetimes.key_types] == [
        ("ec-p256", 121, True),
        ("rsa-2048", 7, True),
    ]
    # Live at the report time and over 24h: legacy/batch's 7d ones and monitoring's 2d ones.
    assert lifetimes.violations_total == 9
    assert {v.namespace for v in lifetimes.violations} == {"legacy", "monitoring"}


def test_refusals_by_reason_with_their_callers(document: ComplianceDocument) -> None:
    refusals = document.refusals
    assert refusals.total == 36
    assert [(r.reason, r.count) for r in refusals.by_reason] == [
        ("token_expired", 20),
        ("token_invalid", 12),
        ("ttl_too_long", 3),
        ("key_type_not_allowed", 1),
    ]
    assert [(c.value, c.count) for c in refusals.by_reason[0].top_callers] == [
        ("ipv4:10.8.3.7", 11),
        ("ipv4:10.8.3.8", 9),
    ]
    assert refusals.top_callers[0].value == "ipv4:203.0.113.9"
    assert refusals.by_identity[0].identity == "(unauthenticated)"


def test_orders_and_revocations(document: ComplianceDocument, mesh: ComplianceMesh) -> None:
    rotations = document.rotations
    (order,) = rotations.orders
    assert (order.order_id, order.selector, order.state) == (ORDER_ID, "namespace=payments", "pushing")
    assert (order.matched, order.replaced, order.outstanding) == (3, 1, 2)
    assert rotations.outstanding == 2
    assert [(r.serial, r.reason, r.note) for r in rotations.revocations] == [
        (mesh.revoked, "keyCompromise", "key copied to a laptop")
    ]


def test_ca_events_and_certificates(document: ComplianceDocument) -> None:
    ca = document.ca
    assert [t.change for t in ca.transitions] == [
        "active -> retiring",
        "prepared -> active",
        "made prepared",
        "made active",
    ]
    assert [e.event for e in ca.events] == ["created"]
    assert ca.keyring_problem is None
    roles = [(c.role, c.slots, c.subject, c.warning) for c in ca.certificates]
    assert roles == [
        ("root", "1 (retiring), 2 (active)", "test root", False),
        ("signing (intermediate)", "1 (retiring)", "meshca signing CA 1", True),  # ends in 13 days
        ("signing (intermediate)", "2 (active)", "meshca signing CA 2", False),
    ]
    # The ledger's records name the keyring's signing certificates.
    assert {t.signing_fingerprint for t in ca.transitions} == {c.fingerprint for c in ca.certificates[1:]}


def test_mtls_coverage_answers_which_identities_are_not_strict(document: ComplianceDocument) -> None:
    coverage = document.coverage
    assert [i.identity.rsplit("/", 1)[1] for i in coverage.exposed] == ["batch", "reports"]
    assert coverage.exposed[0].not_strict == ("PERMISSIVE on every port (legacy/default)",)
    assert [i.identity.rsplit("/", 1)[1] for i in coverage.exposed_if_labelled] == [
        "cart",
        "catalog",
        "checkout",
    ]
    cart = next(i for i in coverage.identities if i.identity == SHOP_CART)
    assert cart.if_labelled == (
        "PERMISSIVE on port 8080 if its pods are labelled app=cart (shop/cart-metrics)",
    )
    shop = [(p.applies_to, p.port, p.mode, p.level) for p in coverage.ports if p.namespace == "shop"]
    assert shop == [
        ("pods no workload policy selects", "other ports", "STRICT", "mesh"),
        ("pods labelled app=cart", "8080", "PERMISSIVE", "port"),
        ("pods labelled app=cart", "other ports", "STRICT", "workload"),
    ]
    assert coverage.headline.startswith("2 of 9 identities serve traffic that is not STRICT; 3 more")


def test_without_policies_coverage_is_not_assessed(mesh: ComplianceMesh) -> None:
    cfg = dataclasses.replace(config(mesh), policies=None)
    assert build(cfg).coverage.source is None


def test_the_evidence_names_the_signed_head_and_the_command(
    document: ComplianceDocument, mesh: ComplianceMesh
) -> None:
    evidence = document.evidence
    assert evidence.verified is True
    assert evidence.summary.startswith("ledger OK: 171 entries")
    assert evidence.head is not None
    assert (evidence.head.seq, evidence.head.where) == (171, str(mesh.state / "ledger-head.json"))
    head_file = (mesh.state / "ledger-head.json").read_text()
    assert evidence.head.hash in head_file and evidence.head.key_id in head_file
    assert evidence.head.key_sha256 is not None and len(evidence.head.key_sha256) == 64
    assert evidence.command == (
        f"meshca audit verify --ledger sqlite:///{mesh.state}/ledger.db --state-dir {mesh.state}"
    )
    assert (evidence.period_first_seq, evidence.period_last_seq) == (1, 171)


def test_without_the_ledger_key_the_document_says_unverified(mesh: ComplianceMesh, tmp_path: Path) -> None:
    cfg = dataclasses.replace(config(mesh), ledger_key=tmp_path / "absent.pem", ledger_key_given=True)
    evidence = build(cfg).evidence
    assert evidence.verified is None
    assert evidence.head is None
    assert evidence.summary.startswith("not verified: there is no ledger key at")
    assert "--ledger-key" in evidence.command


def test_a_ledger_that_fails_verification_gives_no_document(tmp_path: Path) -> None:
    state = tmp_path / "state"
    mesh = write_mesh(sqlite_url(state / "ledger.db"), state, tmp_path / "policies")
    store = LedgerStore(mesh.url)
    try:
        sql(store, "UPDATE ledger_entries SET content = replace(content, 'cart', 'cort') WHERE seq = 5")
    finally:
        store.dispose()
    with pytest.raises(LedgerTamperedError, match="ledger TAMPERED at entry 5"):
        build(config(mesh))


# --------------------------------------------------------------------------- pure pieces


def test_many_lifetimes_go_in_ranges_with_the_maximum_as_an_edge() -> None:
    lifetimes = [
        (minutes, 1) for minutes in (5, 30, 45, 90, 120, 600, 1440, 1500, 2000, 2880, 4000, 9000, 90000)
    ]
    bars = doc.lifetime_bars(lifetimes, timedelta(hours=20))
    labels = [(b.label, b.count, b.over_max) for b in bars]
    assert ("<= 15m", 1, False) in labels
    assert ("12h-20h", 0, False) not in labels
    assert labels[labels.index(("6h-20h", 1, False)) + 1] == ("20h-1d", 1, True)
    assert sum(b.count for b in bars) == len(lifetimes)


def test_days_without_entries_are_zeros() -> None:
    filled = doc.fill_days([DayCount(day="2026-02-27", issued=1), DayCount(day="2026-03-02", refused=2)])
    assert [(d.day, d.issued, d.refused) for d in filled] == [
        ("2026-02-27", 1, 0),
        ("2026-02-28", 0, 0),
        ("2026-03-01", 0, 0),
        ("2026-03-02", 0, 2),
    ]
    assert doc.fill_days([]) == ()


def _policy(
    namespace: str,
    name: str,
    mode: MtlsMode,
    selector: dict[str, str] | None = None,
    port_modes: dict[int, MtlsMode] | None = None,
) -> PeerAuthentication:
    return PeerAuthentication(
        ref=PolicyRef(namespace, name),
        created=datetime(2026, 1, 1, tzinfo=UTC),
        selector=selector,
        mode=mode,
        port_modes=port_modes or {},
    )


def test_with_no_policy_a_namespace_is_permissive_by_istios_default() -> None:
    (row,) = doc.namespace_modes("shop", PoliciesFound(source="dir", root_namespace="istio-system"))
    assert (row.mode, row.level, row.strict) == ("PERMISSIVE", "default", False)


def test_an_invalid_policy_that_could_apply_makes_the_mode_unknown() -> None:
    found = PoliciesFound(
        source="dir",
        root_namespace="istio-system",
        policies=(_policy("istio-system", "default", MtlsMode.STRICT),),
        invalid=(InvalidPolicy("shop.yaml: spec.mtls.mode is not a mode", frozenset({"shop"})),),
    )
    (row,) = doc.namespace_modes("shop", found)
    assert (row.mode, row.strict) == ("UNKNOWN", False)
    assert "shop.yaml" in row.decided_by
    (other,) = doc.namespace_modes("web", found)
    assert other.mode == "STRICT"


def test_a_disabled_port_of_selected_pods_is_reported_for_those_pods() -> None:
    found = PoliciesFound(
        source="dir",
        root_namespace="istio-system",
        policies=(
            _policy("istio-system", "default", MtlsMode.STRICT),
            _policy("db", "pg", MtlsMode.UNSET, selector={"app": "pg"}, port_modes={5432: MtlsMode.DISABLE}),
        ),
    )
    rows = [(r.labels, r.port, r.mode, r.level) for r in doc.namespace_modes("db", found)]
    assert rows == [
        (None, "other ports", "STRICT", "mesh"),
        ("app=pg", "5432", "DISABLE", "port"),
        ("app=pg", "other ports", "STRICT", "mesh"),
    ]
