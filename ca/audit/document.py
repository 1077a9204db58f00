"""The compliance report as a document: its model, built from what the ledger queries, the CA
keyring, the PeerAuthentication policies and the ledger verification gave. Pure code: the
reading is ca.audit.document_sources', the rendering ca.audit.document_render's.

Every section is a frozen value holding display-ready facts (times as ledger timestamps,
counts, flags such as `over_max` or `strict`), so the HTML and Markdown templates only lay
them out.
"""

from __future__ import annotations

import hashlib
import shlex
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from ca.common.durations import format_duration
from ca.issuance.authority import fingerprint_sha256
from ca.issuance.issuer import IssuancePolicy
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.slots import SlotCertificates
from ca.ledger.audit_filter import AuditFilter
from ca.ledger.checkpoint import Checkpoint
from ca.ledger.compliance import CallerRefusals, Counted, DayCount, Listed, PeriodSpan
from ca.ledger.entries import CA_EVENT, CA_SLOT, timestamp
from ca.ledger.queries import OrderSummary, Report, Violation
from ca.ledger.verify import VerifyReport
from ca.policy.model import InvalidPolicy, MtlsMode, PeerAuthentication, Workload
from ca.policy.resolve import Resolution, resolve_workload
from ca.policy.workload_flags import label_text

# A CA certificate this close to its end is flagged, as the expiry alert does.
EXPIRY_WARNING = timedelta(days=30)
# More distinct lifetimes than this are put in ranges for the chart.
MAX_LIFETIME_BARS = 12
LIFETIME_EDGES = (
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(hours=24),
    timedelta(days=2),
    timedelta(days=7),
    timedelta(days=30),
    timedelta(days=90),
    timedelta(days=365),
)
MAX_IDENTITY_REFUSAL_ROWS = 50
NO_NAMESPACE = "(none: refused before authentication)"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, kw_only=True)
class KeyringFound:
    """The CA keyring's certificates as read (`slots` None when none could be read, and why)."""

    where: str
    slots: tuple[SlotCertificates, ...] | None
    problem: str | None = None


@dataclass(frozen=True, kw_only=True)
class PoliciesFound:
    """The PeerAuthentication read for the coverage section; `source` None: none was asked for."""

    source: str | None
    root_namespace: str
    policies: tuple[PeerAuthentication, ...] = ()
    invalid: tuple[InvalidPolicy, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class VerificationFound:
    """What `meshca audit verify` found, or why it could not run (`result` None)."""

    result: VerifyReport | None
    problem: str | None
    external_heads: tuple[str, ...]  # where signed heads kept outside the database were found
    heads: tuple[tuple[Checkpoint, str], ...]  # every signed head seen, with where it was
    public_key: ed25519.Ed25519PublicKey | None
    command: tuple[str, ...]  # the verify command line, to run again later


@dataclass(frozen=True, kw_only=True)
class DocumentInputs:
    at: datetime
    filter: AuditFilter
    ledger: str  # the ledger URL, password removed
    policy: IssuancePolicy
    report: Report
    days: tuple[DayCount, ...]
    lifetimes: tuple[tuple[int, int], ...]  # (minutes, certificates)
    key_types: tuple[Counted, ...]
    top_callers: tuple[Counted, ...]
    callers_by_reason: tuple[CallerRefusals, ...]
    ca_records: Listed
    revocations: Listed
    span: PeriodSpan
    keyring: KeyringFound
    policies: PoliciesFound
    verification: VerificationFound


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, kw_only=True)
class Period:
    since: str | None
    until: str | None
    at: str
    filters: tuple[str, ...]  # identity filters as `--flag value`, empty for the whole mesh

    @property
    def text(self) -> str:
        start = _short(self.since) if self.since else "the first entry"
        end = _short(self.until) if self.until else f"{_short(self.at)} (report time)"
        return f"{start} to {end}"


@dataclass(frozen=True, kw_only=True)
class NamespaceSummary:
    namespace: str
    identities: int
    identities_live: int
    issued: int
    live: int
    refused: int


@dataclass(frozen=True, kw_only=True)
class Summary:
    issued: int
    refused: int
    identities: int
    identities_live: int
    live: int
    namespaces: tuple[NamespaceSummary, ...]
    days: tuple[DayCount, ...]


@dataclass(frozen=True, kw_only=True)
class LifetimeBar:
    label: str
    count: int
    over_max: bool


@dataclass(frozen=True, kw_only=True)
class KeyTypeCount:
    key_type: str
    count: int
    allowed: bool


@dataclass(frozen=True, kw_only=True)
class Lifetimes:
    max_ttl: str
    allowed_keys: str  # the key policy in words
    bars: tuple[LifetimeBar, ...]
    over_max: int  # certificates issued in the period with a lifetime over the maximum
    shortest: str | None
    longest: str | None
    key_types: tuple[KeyTypeCount, ...]
    violations: tuple[Violation, ...]
    violations_total: int


@dataclass(frozen=True, kw_only=True)
class ReasonRefusals:
    reason: str
    count: int
    top_callers: tuple[Counted, ...]


@dataclass(frozen=True, kw_only=True)
class IdentityRefusal:
    namespace: str
    identity: str
    reason: str
    count: int


@dataclass(frozen=True, kw_only=True)
class Refusals:
    total: int
    by_reason: tuple[ReasonRefusals, ...]
    top_callers: tuple[Counted, ...]
    by_identity: tuple[IdentityRefusal, ...]
    by_identity_total: int


@dataclass(frozen=True, kw_only=True)
class Revocation:
    time: str
    serial: str
    identity: str
    reason: str
    order_id: str | None
    note: str | None


@dataclass(frozen=True, kw_only=True)
class Rotations:
    orders: tuple[OrderSummary, ...]
    orders_total: int
    outstanding: int  # certificates still outstanding over every order listed
    revocations: tuple[Revocation, ...]
    revocations_total: int


@dataclass(frozen=True, kw_only=True)
class SlotTransition:
    time: str
    slot: str
    change: str  # `made prepared`, `prepared -> active`
    forced: bool
    requested_by: str
    replica: str
    why: str
    signing_fingerprint: str
    signing_not_after: str


@dataclass(frozen=True, kw_only=True)
class CaEvent:
    time: str
    event: str
    key_id: str
    source: str
    not_after: str


@dataclass(frozen=True, kw_only=True)
class CaCertificate:
    role: str  # root, intermediate, signing (intermediate), root (signs leaves itself)
    slots: str  # `1 (active), 2 (prepared)`
    subject: str
    fingerprint: str
    not_before: str
    not_after: str
    remaining: str  # `412d`, `expired`
    warning: bool  # expired or within EXPIRY_WARNING


@dataclass(frozen=True, kw_only=True)
class CaEvents:
    transitions: tuple[SlotTransition, ...]
    events: tuple[CaEvent, ...]
    records_total: int
    keyring_where: str
    keyring_problem: str | None  # why the certificates below are not there
    certificates: tuple[CaCertificate, ...]


@dataclass(frozen=True, kw_only=True)
class PortMode:
    namespace: str
    applies_to: str  # which pods of the namespace, in words
    labels: str | None  # the pods a workload policy selects (`app=cart`); None: the others
    port: str  # a port number, or `other ports`
    mode: str  # STRICT, PERMISSIVE, DISABLE, or UNKNOWN (an invalid policy could apply)
    level: str
    decided_by: str
    strict: bool


@dataclass(frozen=True, kw_only=True)
class IdentityCoverage:
    """Where an identity's traffic is not STRICT. The ledger knows an identity's namespace but
    not its pods' labels: what its namespace's policies set for every pod is `not_strict`; what a
    workload policy sets for the pods its selector matches is `if_labelled`."""

    namespace: str
    identity: str  # the SPIFFE ID
    live: int
    not_strict: tuple[str, ...]
    if_labelled: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Coverage:
    source: str | None  # None: not assessed (no --policies)
    root_namespace: str
    identities: tuple[IdentityCoverage, ...]
    ports: tuple[PortMode, ...]
    notes: tuple[str, ...]

    @property
    def exposed(self) -> tuple[IdentityCoverage, ...]:
        """Identities whose traffic is not STRICT whatever their pods' labels."""
        return tuple(i for i in self.identities if i.not_strict)

    @property
    def exposed_if_labelled(self) -> tuple[IdentityCoverage, ...]:
        """Identities STRICT unless their pods carry a workload policy's labels."""
        return tuple(i for i in self.identities if i.if_labelled and not i.not_strict)

    @property
    def headline(self) -> str:
        total = len(self.identities)
        if not total:
            return "No identity was issued a certificate in this period."
        text = f"{len(self.exposed)} of {total} identities serve traffic that is not STRICT"
        maybe = len(self.exposed_if_labelled)
        if maybe:
            text += f"; {maybe} more do on some ports if their pods carry a workload policy's labels"
        return text + "."


@dataclass(frozen=True, kw_only=True)
class SignedHead:
    seq: int
    hash: str
    time: str
    key_id: str
    key_sha256: str | None  # of the ledger's raw Ed25519 public key, when the key was at hand
    where: str


@dataclass(frozen=True, kw_only=True)
class Evidence:
    verified: bool | None  # None: verification could not run
    summary: str
    entries_checked: int
    checkpoints_checked: int
    last_seq: int
    signed_through: int
    external_heads: tuple[str, ...]
    head: SignedHead | None
    period_first_seq: int | None
    period_last_seq: int | None
    period_kinds: tuple[Counted, ...]
    command: str


@dataclass(frozen=True, kw_only=True)
class ComplianceDocument:
    generated: str
    ledger: str
    period: Period
    summary: Summary
    lifetimes: Lifetimes
    refusals: Refusals
    rotations: Rotations
    ca: CaEvents
    coverage: Coverage
    evidence: Evidence


# --------------------------------------------------------------------------- building


def build_document(inputs: DocumentInputs) -> ComplianceDocument:
    report = inputs.report
    return ComplianceDocument(
        generated=report.at,
        ledger=inputs.ledger,
        period=_period(inputs),
        summary=_summary(report, inputs.days),
        lifetimes=_lifetimes(inputs),
        refusals=_refusals(inputs),
        rotations=_rotations(inputs),
        ca=_ca_events(inputs),
        coverage=coverage(report, inputs.policies),
        evidence=_evidence(inputs),
    )


def _short(stamp: str | None) -> str:
    return f"{stamp[:16].replace('T', ' ')} UTC" if stamp else "-"


def _period(inputs: DocumentInputs) -> Period:
    f = inputs.filter
    filters = [
        f"{flag} {value}"
        for flag, value in (
            ("--spiffe-id", f.spiffe_id),
            ("--namespace", f.namespace),
            ("--service-account", f.service_account),
            ("--pod", f.pod),
        )
        if value is not None
    ]
    return Period(
        since=timestamp(f.since) if f.since else None,
        until=timestamp(f.until) if f.until else None,
        at=inputs.report.at,
        filters=tuple(filters),
    )


def _namespace(value: str | None) -> str:
    return value if value is not None else NO_NAMESPACE


def _summary(report: Report, days: tuple[DayCount, ...]) -> Summary:
    by_namespace: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for identity in report.identities:
        row = by_namespace[_namespace(identity.namespace)]
        if identity.spiffe_id is not None and identity.issued:
            row[0] += 1
            row[1] += 1 if identity.valid_now else 0
        row[2] += identity.issued
        row[3] += identity.valid_now
        row[4] += identity.refused
    namespaces = tuple(
        NamespaceSummary(
            namespace=name, identities=r[0], identities_live=r[1], issued=r[2], live=r[3], refused=r[4]
        )
        for name, r in sorted(by_namespace.items(), key=lambda item: (item[0] == NO_NAMESPACE, item[0]))
    )
    return Summary(
        issued=sum(n.issued for n in namespaces),
        refused=sum(n.refused for n in namespaces),
        identities=sum(n.identities for n in namespaces),
        identities_live=sum(n.identities_live for n in namespaces),
        live=sum(n.live for n in namespaces),
        namespaces=namespaces,
        days=fill_days(days),
    )


def fill_days(days: Sequence[DayCount]) -> tuple[DayCount, ...]:
    """Every day from the first to the last given, those without entries as zeros."""
    if not days:
        return ()
    given = {d.day: d for d in days}
    first = datetime.strptime(days[0].day, "%Y-%m-%d")
    last = datetime.strptime(days[-1].day, "%Y-%m-%d")
    filled = []
    for offset in range((last - first).days + 1):
        day = (first + timedelta(days=offset)).strftime("%Y-%m-%d")
        filled.append(given.get(day, DayCount(day=day)))
    return tuple(filled)


def _span(seconds: float) -> str:
    return format_duration(timedelta(seconds=int(seconds)))


def lifetime_bars(lifetimes: Sequence[tuple[int, int]], max_ttl: timedelta) -> tuple[LifetimeBar, ...]:
    """One bar per lifetime granted, shortest first; with more than MAX_LIFETIME_BARS different
    lifetimes, one per range between LIFETIME_EDGES and the maximum, which is always an edge."""
    if len(lifetimes) <= MAX_LIFETIME_BARS:
        return tuple(
            LifetimeBar(label=_span(m * 60), count=n, over_max=timedelta(minutes=m) > max_ttl)
            for m, n in lifetimes
        )
    edges = sorted({*LIFETIME_EDGES, max_ttl})
    counts = [0] * (len(edges) + 1)
    for minutes, count in lifetimes:
        index = next((i for i, edge in enumerate(edges) if timedelta(minutes=minutes) <= edge), len(edges))
        counts[index] += count
    bars = []
    for index, count in enumerate(counts):
        low = edges[index - 1] if index else None
        high = edges[index] if index < len(edges) else None
        if high is None:
            label = f"> {format_duration(edges[-1])}"
        elif low is None:
            label = f"<= {format_duration(high)}"
        else:
            label = f"{format_duration(low)}-{format_duration(high)}"
        if count or (high is not None and high <= max_ttl and low is not None):
            bars.append(LifetimeBar(label=label, count=count, over_max=low is not None and low >= max_ttl))
    return tuple(bars)


def allowed_keys(policy: KeyPolicy) -> str:
    curves = ", ".join(sorted(policy.ec_curves))
    return f"EC {curves}; RSA {policy.min_rsa_bits} to {policy.max_rsa_bits} bits"


def _lifetimes(inputs: DocumentInputs) -> Lifetimes:
    max_ttl = inputs.policy.max_ttl
    minutes = [m for m, _ in inputs.lifetimes]
    report = inputs.report
    return Lifetimes(
        max_ttl=format_duration(max_ttl),
        allowed_keys=allowed_keys(inputs.policy.key_policy),
        bars=lifetime_bars(inputs.lifetimes, max_ttl),
        over_max=sum(n for m, n in inputs.lifetimes if timedelta(minutes=m) > max_ttl),
        shortest=_span(min(minutes) * 60) if minutes else None,
        longest=_span(max(minutes) * 60) if minutes else None,
        key_types=tuple(
            KeyTypeCount(
                key_type=k.value, count=k.count, allowed=inputs.policy.key_policy.allows_label(k.value)
            )
            for k in inputs.key_types
        ),
        violations=report.violations,
        violations_total=report.violations_total,
    )


def _identity(spiffe_id: str | None) -> str:
    return spiffe_id if spiffe_id else "(unauthenticated)"


def _refusals(inputs: DocumentInputs) -> Refusals:
    report = inputs.report
    totals: dict[str, int] = defaultdict(int)
    for refusal in report.refusals:
        totals[refusal.reason] += refusal.count
    callers: dict[str, list[Counted]] = defaultdict(list)
    for found in inputs.callers_by_reason:
        callers[found.reason].append(Counted(value=found.caller, count=found.count))
    by_reason = tuple(
        ReasonRefusals(reason=reason, count=count, top_callers=tuple(callers.get(reason, ())))
        for reason, count in sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    )
    by_identity = sorted(report.refusals, key=lambda r: (-r.count, r.reason, r.spiffe_id or ""))
    return Refusals(
        total=sum(totals.values()),
        by_reason=by_reason,
        top_callers=inputs.top_callers,
        by_identity=tuple(
            IdentityRefusal(
                namespace=_namespace(r.namespace),
                identity=_identity(r.spiffe_id),
                reason=r.reason,
                count=r.count,
            )
            for r in by_identity[:MAX_IDENTITY_REFUSAL_ROWS]
        ),
        by_identity_total=len(by_identity),
    )


def _rotations(inputs: DocumentInputs) -> Rotations:
    report = inputs.report
    return Rotations(
        orders=report.orders,
        orders_total=report.orders_total,
        outstanding=sum(o.outstanding for o in report.orders),
        revocations=tuple(
            Revocation(
                time=str(e.get("time")),
                serial=str(e.get("serial")),
                identity=_identity(e.get("spiffe_id")),
                reason=str(e.get("reason")),
                order_id=e.get("order_id"),
                note=e.get("note"),
            )
            for e in inputs.revocations.entries
        ),
        revocations_total=inputs.revocations.total,
    )


def _transition(entry: Mapping[str, Any]) -> SlotTransition:
    before = entry.get("from_state")
    return SlotTransition(
        time=str(entry.get("time")),
        slot=str(entry.get("slot")),
        change=f"{before} -> {entry.get('reason')}" if before else f"made {entry.get('reason')}",
        forced=bool(entry.get("forced")),
        requested_by=str(entry.get("requested_by") or "-"),
        replica=str(entry.get("replica") or "-"),
        why=str(entry.get("why") or ""),
        signing_fingerprint=str(entry.get("signing_fingerprint") or ""),
        signing_not_after=str(entry.get("not_after") or ""),
    )


def _ca_event(entry: Mapping[str, Any]) -> CaEvent:
    return CaEvent(
        time=str(entry.get("time")),
        event=str(entry.get("reason")),
        key_id=str(entry.get("ca_key_id") or ""),
        source=str(entry.get("source") or ""),
        not_after=str(entry.get("not_after") or ""),
    )


def _ca_events(inputs: DocumentInputs) -> CaEvents:
    records = inputs.ca_records.entries
    keyring = inputs.keyring
    return CaEvents(
        transitions=tuple(_transition(e) for e in records if e.get("kind") == CA_SLOT),
        events=tuple(_ca_event(e) for e in records if e.get("kind") == CA_EVENT),
        records_total=inputs.ca_records.total,
        keyring_where=keyring.where,
        keyring_problem=keyring.problem,
        certificates=ca_certificates(keyring.slots or (), inputs.at),
    )


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _remaining(not_after: datetime, at: datetime) -> str:
    left = not_after - at
    if left <= timedelta(0):
        return "expired"
    return (
        f"{left.days}d"
        if left >= timedelta(days=1)
        else format_duration(timedelta(seconds=int(left.total_seconds())))
    )


def ca_certificates(slots: Iterable[SlotCertificates], at: datetime) -> tuple[CaCertificate, ...]:
    """Each CA certificate of the keyring once, roots first, each naming the slots that hold it."""
    found: dict[str, tuple[str, x509.Certificate, list[str]]] = {}
    for slot in slots:
        label = f"{slot.id} ({slot.state.value})"
        self_signed = slot.signing.issuer == slot.signing.subject
        held = [
            *(("root", root) for root in slot.roots),
            *(("intermediate", cert) for cert in slot.chain),
            ("root (signs leaves itself)" if self_signed else "signing (intermediate)", slot.signing),
        ]
        for role, cert in held:
            fingerprint = fingerprint_sha256(cert)
            if fingerprint in found:
                if label not in found[fingerprint][2]:
                    found[fingerprint][2].append(label)
                continue
            found[fingerprint] = (role, cert, [label])
    rows = []
    for fingerprint, (role, cert, labels) in found.items():
        not_after = cert.not_valid_after_utc
        rows.append(
            CaCertificate(
                role=role,
                slots=", ".join(labels),
                subject=_common_name(cert),
                fingerprint=fingerprint,
                not_before=timestamp(cert.not_valid_before_utc),
                not_after=timestamp(not_after),
                remaining=_remaining(not_after, at),
                warning=not_after - at <= EXPIRY_WARNING,
            )
        )
    return tuple(sorted(rows, key=lambda c: (not c.role.startswith("root"), c.not_after)))


# --------------------------------------------------------------------------- mTLS coverage


def _port_rows(namespace: str, labels: str | None, resolution: Resolution) -> list[PortMode]:
    decisions = [*(resolution.ports[p] for p in sorted(resolution.ports)), resolution.workload]
    return [
        PortMode(
            namespace=namespace,
            applies_to=f"pods labelled {labels}" if labels else "pods no workload policy selects",
            labels=labels,
            port=str(d.port) if d.port is not None else "other ports",
            mode=d.mode.value,
            level=d.level,
            decided_by=str(d.decided_by) if d.decided_by else "(no policy: Istio's default)",
            strict=d.mode is MtlsMode.STRICT,
        )
        for d in decisions
    ]


def namespace_modes(namespace: str, found: PoliciesFound) -> list[PortMode]:
    """The effective mode per port for the pods of a namespace, resolved by meshca's resolver:
    for pods that no workload policy selects, and for the pods each workload policy of the
    namespace selects (those holding its selector's labels). An invalid policy that could
    apply makes the namespace's mode UNKNOWN rather than a guess."""
    root = found.root_namespace
    bare = Workload(namespace, {})
    broken = [p for p in found.invalid if p.could_apply_to(bare, root)]
    if broken:
        return [
            PortMode(
                namespace=namespace,
                applies_to="every pod",
                labels=None,
                port="every port",
                mode="UNKNOWN",
                level="-",
                decided_by="invalid policy: " + " | ".join(p.error for p in broken),
                strict=False,
            )
        ]
    rows = _port_rows(
        namespace,
        None,
        resolve_workload(found.policies, bare, root_namespace=root),
    )
    if namespace == root:
        return rows  # a selector policy in the root namespace never applies
    selectors = sorted(
        {label_text(p.selector) for p in found.policies if p.ref.namespace == namespace and p.selector}
    )
    for text in selectors:
        labels = dict(item.split("=", 1) for item in text.split(","))
        resolution = resolve_workload(found.policies, Workload(namespace, labels), root_namespace=root)
        rows += _port_rows(namespace, text, resolution)
    return rows


def _exposures(rows: Sequence[PortMode]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(not STRICT for every pod of the namespace, not STRICT for the pods some labels select)."""
    selected = any(r.labels for r in rows)
    unless = " unless a workload policy selects its pods" if selected else ""
    everywhere, labelled = [], []
    for row in rows:
        if row.strict:
            continue
        port = "every port" if row.port in ("other ports", "every port") else f"port {row.port}"
        if row.labels is None:
            detail = f": {row.decided_by}" if row.mode == "UNKNOWN" else f" ({row.decided_by})"
            everywhere.append(f"{row.mode} on {port}{unless}{detail}")
        else:
            where = "other ports" if port == "every port" else port
            labelled.append(f"{row.mode} on {where} if its pods are labelled {row.labels} ({row.decided_by})")
    return tuple(everywhere), tuple(labelled)


def coverage(report: Report, found: PoliciesFound) -> Coverage:
    live: dict[tuple[str, str], int] = {}
    for identity in report.identities:
        if identity.spiffe_id is not None and identity.namespace is not None and identity.issued:
            live[(identity.namespace, identity.spiffe_id)] = identity.valid_now
    if found.source is None:
        return Coverage(source=None, root_namespace=found.root_namespace, identities=(), ports=(), notes=())
    rows_by_namespace = {ns: namespace_modes(ns, found) for ns in sorted({ns for ns, _ in live})}
    exposures = {ns: _exposures(rows) for ns, rows in rows_by_namespace.items()}
    identities = tuple(
        IdentityCoverage(
            namespace=namespace,
            identity=spiffe_id,
            live=count,
            not_strict=exposures[namespace][0],
            if_labelled=exposures[namespace][1],
        )
        for (namespace, spiffe_id), count in sorted(live.items())
    )
    notes = (
        *found.notes,
        *(
            f"not in effect (fails validation), applies to no namespace listed: {p.error}"
            for p in found.invalid
            if not any(p.could_apply_to(Workload(ns, {}), found.root_namespace) for ns in rows_by_namespace)
        ),
    )
    return Coverage(
        source=found.source,
        root_namespace=found.root_namespace,
        identities=identities,
        ports=tuple(row for rows in rows_by_namespace.values() for row in rows),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- evidence


def key_sha256(public_key: ed25519.Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _newest_head(found: VerificationFound) -> SignedHead | None:
    """The newest signed head seen, which the verification covered (it passed)."""
    if not found.heads:
        return None
    head, where = max(found.heads, key=lambda pair: pair[0].head_seq)
    return SignedHead(
        seq=head.head_seq,
        hash=head.head_hash,
        time=head.time,
        key_id=head.key_id,
        key_sha256=key_sha256(found.public_key) if found.public_key is not None else None,
        where=where,
    )


def _evidence(inputs: DocumentInputs) -> Evidence:
    found = inputs.verification
    result = found.result
    span = inputs.span
    return Evidence(
        verified=None if result is None else result.ok,
        summary=result.summary() if result is not None else f"not verified: {found.problem}",
        entries_checked=result.entries_checked if result else 0,
        checkpoints_checked=result.checkpoints_checked if result else 0,
        last_seq=result.last_seq if result else 0,
        signed_through=result.signed_through if result else 0,
        external_heads=found.external_heads,
        head=_newest_head(found) if result is not None and result.ok else None,
        period_first_seq=span.first_seq,
        period_last_seq=span.last_seq,
        period_kinds=span.kinds,
        command=shlex.join(found.command),
    )
