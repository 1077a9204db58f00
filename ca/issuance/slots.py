"""The CA's signing slots and how they move: prepared -> active -> retiring -> retired.

Pure code. A slot holds one generation of signing material: a signing certificate and key, the
chain above it, and the root(s) it chains to (and, in the self-signed mode, the root's key, so
that the next intermediate can be made under the same root). At any time exactly one slot is
`active` and signs every new leaf; at most one is `prepared` (published in the trust bundle,
signing nothing yet); `retiring` slots sign nothing but keep their roots in the bundle until the
last leaf they signed has expired; `retired` slots are gone from the bundle.

The trust bundle is the roots of every slot that is not retired, so a new root reaches consumers
while it is prepared, before any leaf depends on it, and an old one leaves only after its last
leaf has expired.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509

from ca.errors import CaMaterialError, UnsafeTransitionError
from ca.issuance.authority import SigningAuthority, cert_pem, fingerprint_sha256, load_pem_certificates
from ca.issuance.keys import PrivateKey, load_private_key_pem, private_key_pem

KEYRING_FORMAT = 1
KEYRING_DOCUMENT = "slots.json"


class SlotState(StrEnum):
    PREPARED = "prepared"
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"


@dataclass(frozen=True, kw_only=True)
class Slot:
    id: str
    state: SlotState
    authority: SigningAuthority  # this slot's own roots only; the bundle is the keyring's
    since: datetime  # when the slot entered `state`
    root_key: PrivateKey | None = field(default=None, repr=False)

    @property
    def signing_cert(self) -> x509.Certificate:
        return self.authority.signing_cert

    @property
    def signing_fingerprint(self) -> str:
        return self.authority.fingerprint

    @property
    def root_fingerprints(self) -> tuple[str, ...]:
        return tuple(fingerprint_sha256(root) for root in self.authority.roots)

    @property
    def root(self) -> x509.Certificate:
        return self.authority.roots[0]

    @property
    def signs_with_root(self) -> bool:
        """A slot from before intermediates: its root signs leaves itself."""
        return self.authority.is_self_signed

    def leaves_end(self, max_leaf_ttl: timedelta) -> datetime:
        """When the last leaf this slot can have signed expires: it stopped signing at `since`
        (when it began retiring), and no leaf outlives its issuer."""
        return min(self.authority.expiry(), self.since + max_leaf_ttl)

    def moved(self, state: SlotState, at: datetime) -> Slot:
        return replace(self, state=state, since=at)


@dataclass(frozen=True, kw_only=True)
class Transition:
    """One slot changing state: what the ledger records."""

    slot_id: str
    from_state: SlotState | None  # None: the slot was just made
    to_state: SlotState
    signing_fingerprint: str
    root_fingerprints: tuple[str, ...]
    at: datetime
    forced: bool = False

    @classmethod
    def of(cls, slot: Slot, before: SlotState | None, *, forced: bool = False) -> Transition:
        return cls(
            slot_id=slot.id,
            from_state=before,
            to_state=slot.state,
            signing_fingerprint=slot.signing_fingerprint,
            root_fingerprints=slot.root_fingerprints,
            at=slot.since,
            forced=forced,
        )


@dataclass(frozen=True)
class Keyring:
    slots: tuple[Slot, ...]  # oldest first

    def __post_init__(self) -> None:
        active = [s for s in self.slots if s.state is SlotState.ACTIVE]
        if len(active) != 1:
            raise CaMaterialError(
                f"the CA keyring has {len(active)} active slots; it needs exactly one. "
                "Restore the CA material from a backup"
            )
        if sum(1 for s in self.slots if s.state is SlotState.PREPARED) > 1:
            raise CaMaterialError("the CA keyring has more than one prepared slot; restore it from a backup")

    @classmethod
    def single(cls, authority: SigningAuthority, *, since: datetime, root_key: PrivateKey | None) -> Keyring:
        return cls(
            (Slot(id="1", state=SlotState.ACTIVE, authority=authority, since=since, root_key=root_key),)
        )

    @property
    def active(self) -> Slot:
        return next(s for s in self.slots if s.state is SlotState.ACTIVE)

    @property
    def prepared(self) -> Slot | None:
        return next((s for s in self.slots if s.state is SlotState.PREPARED), None)

    @property
    def retiring(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.state is SlotState.RETIRING)

    @property
    def published(self) -> tuple[Slot, ...]:
        """Slots whose roots are in the trust bundle: active, then prepared, then retiring."""
        order = {SlotState.ACTIVE: 0, SlotState.PREPARED: 1, SlotState.RETIRING: 2}
        return tuple(sorted((s for s in self.slots if s.state in order), key=lambda s: order[s.state]))

    def bundle(self) -> tuple[x509.Certificate, ...]:
        seen: set[str] = set()
        roots: list[x509.Certificate] = []
        for slot in self.published:
            for root, fingerprint in zip(slot.authority.roots, slot.root_fingerprints, strict=True):
                if fingerprint not in seen:
                    seen.add(fingerprint)
                    roots.append(root)
        return tuple(roots)

    def bundle_fingerprints(self) -> tuple[str, ...]:
        return tuple(fingerprint_sha256(root) for root in self.bundle())

    def signing_authority(self) -> SigningAuthority:
        """What issues leaves: the active slot, telling clients to trust the whole bundle."""
        active = self.active.authority
        return SigningAuthority(
            signing_cert=active.signing_cert,
            signing_key=active.signing_key,
            chain=active.chain,
            roots=self.bundle(),
            source=active.source,
        )

    def crl_signers(self) -> tuple[SigningAuthority, ...]:
        """Every CA whose leaves may still be live: the active slot and the retiring ones."""
        return tuple(s.authority for s in self.slots if s.state in (SlotState.ACTIVE, SlotState.RETIRING))

    def next_id(self) -> str:
        return str(max(int(s.id) for s in self.slots) + 1)

    def find(self, slot_id: str) -> Slot:
        for slot in self.slots:
            if slot.id == slot_id:
                return slot
        raise UnsafeTransitionError(f"the CA keyring has no slot {slot_id!r}; see `meshca ca status`")

    def replacing(self, *changed: Slot) -> Keyring:
        by_id = {s.id: s for s in changed}
        kept = [by_id.pop(s.id, s) for s in self.slots]
        # A retired slot leaves the keyring (and its keys the store) at once; the ledger keeps
        # its record.
        return Keyring(tuple(s for s in [*kept, *by_id.values()] if s.state is not SlotState.RETIRED))


@dataclass(frozen=True, kw_only=True)
class Acknowledgement:
    """How many connected agents hold a root."""

    holding: int
    connected: int

    @property
    def share(self) -> float:
        return 1.0 if self.connected == 0 else self.holding / self.connected


AckSource = Callable[[str], Acknowledgement]
"""The acknowledgement of a root, by its SHA-256 fingerprint."""


@dataclass(frozen=True, kw_only=True)
class RotationPolicy:
    """When the CA's own material rotates.

    The signing CA lives 60 days and is replaced at half its life: a CA outage of weeks never
    lets it expire, a leaked signing key is useful for two months at most, and a rotation that
    runs every month stays exercised. The root lives 10 years and is replaced at 80%: roots
    travel beyond meshca's reach (federated trust domains, copies of the ConfigMap), and two
    years of overlap give those consumers time to pick up the new one.
    """

    signing_ttl: timedelta = timedelta(days=60)
    signing_rotate_at: float = 0.5
    root_ttl: timedelta = timedelta(days=3650)
    root_rotate_at: float = 0.8
    ack_share: float = 1.0
    max_ack_wait: timedelta = timedelta(hours=24)
    # A new root is in the bundle at least this long before it signs, whoever has acknowledged
    # it: Istio sidecars do not acknowledge, and read it from a ConfigMap that the kubelet
    # refreshes about once a minute.
    min_root_publish: timedelta = timedelta(minutes=5)
    max_leaf_ttl: timedelta = timedelta(days=90)

    def __post_init__(self) -> None:
        for name in ("signing_rotate_at", "root_rotate_at", "ack_share"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise CaMaterialError(f"{name.replace('_', '-')} must be above 0 and at most 1, not {value}")


def _point_in_life(cert: x509.Certificate, fraction: float) -> datetime:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * fraction


def new_roots(keyring: Keyring, slot: Slot) -> tuple[str, ...]:
    """The roots of `slot` that the active slot's consumers do not already trust."""
    held = set(keyring.active.root_fingerprints)
    return tuple(f for f in slot.root_fingerprints if f not in held)


@dataclass(frozen=True, kw_only=True)
class ActivationCheck:
    ready: bool
    why: str


def activation_check(
    keyring: Keyring, now: datetime, policy: RotationPolicy, acks: AckSource
) -> ActivationCheck:
    prepared = keyring.prepared
    if prepared is None:
        return ActivationCheck(ready=False, why="no slot is prepared; prepare one first (--prepare)")
    fresh = new_roots(keyring, prepared)
    if not fresh:
        return ActivationCheck(
            ready=True, why="the prepared slot chains to a root every consumer already has"
        )
    waited = now - prepared.since
    if waited < policy.min_root_publish:
        return ActivationCheck(
            ready=False,
            why=f"the new root has been published for {_seconds(waited)} of at least "
            f"{_seconds(policy.min_root_publish)}; activation waits until "
            f"{(prepared.since + policy.min_root_publish).isoformat()}",
        )
    shares = {f: acks(f) for f in fresh}
    lowest = min(shares.values(), key=lambda a: a.share)
    if lowest.share >= policy.ack_share:
        return ActivationCheck(
            ready=True,
            why=f"{lowest.holding} of {lowest.connected} connected agents hold the new root",
        )
    if waited >= policy.max_ack_wait:
        return ActivationCheck(
            ready=True,
            why=f"the maximum wait of {policy.max_ack_wait} has passed "
            f"({lowest.holding} of {lowest.connected} connected agents hold the new root)",
        )
    return ActivationCheck(
        ready=False,
        why=f"only {lowest.holding} of {lowest.connected} connected agents hold the new root "
        f"(needed: {policy.ack_share:.0%}); activation waits for them or until "
        f"{(prepared.since + policy.max_ack_wait).isoformat()}",
    )


def _seconds(span: timedelta) -> str:
    return f"{int(span.total_seconds())}s"


def prepare(keyring: Keyring, slot: Slot) -> tuple[Keyring, list[Transition]]:
    if keyring.prepared is not None:
        raise UnsafeTransitionError(
            f"slot {keyring.prepared.id} is already prepared; activate it before preparing another",
            reason="already_prepared",
        )
    if slot.state is not SlotState.PREPARED:
        raise ValueError("a new slot starts prepared")
    return keyring.replacing(slot), [Transition.of(slot, None)]


def activate(
    keyring: Keyring,
    now: datetime,
    policy: RotationPolicy,
    acks: AckSource,
    *,
    force: bool = False,
) -> tuple[Keyring, list[Transition]]:
    check = activation_check(keyring, now, policy, acks)
    prepared = keyring.prepared
    if prepared is None or (not check.ready and not force):
        raise UnsafeTransitionError(
            f"cannot activate: {check.why}; pass --force to activate anyway", reason="not_acknowledged"
        )
    old = keyring.active
    new_active, retiring = prepared.moved(SlotState.ACTIVE, now), old.moved(SlotState.RETIRING, now)
    transitions = [
        Transition.of(new_active, SlotState.PREPARED, forced=not check.ready),
        Transition.of(retiring, SlotState.ACTIVE),
    ]
    return keyring.replacing(new_active, retiring), transitions


def retirable(keyring: Keyring, now: datetime, policy: RotationPolicy) -> tuple[Slot, ...]:
    return tuple(s for s in keyring.retiring if now >= s.leaves_end(policy.max_leaf_ttl))


def retire(
    keyring: Keyring, now: datetime, policy: RotationPolicy, *, force: bool = False
) -> tuple[Keyring, list[Transition]]:
    """Retire every retiring slot whose leaves have all expired (every retiring slot with
    `force`, which breaks the leaves that still chain to it)."""
    if not keyring.retiring:
        raise UnsafeTransitionError(
            "no slot is retiring; activate a new slot first", reason="nothing_retiring"
        )
    chosen = keyring.retiring if force else retirable(keyring, now, policy)
    if not chosen:
        waiting = ", ".join(
            f"slot {s.id} until {s.leaves_end(policy.max_leaf_ttl).isoformat()}" for s in keyring.retiring
        )
        raise UnsafeTransitionError(
            f"cannot retire: leaves signed by {waiting} may still be live and would stop validating; "
            "wait, or pass --force (after re-issuing them with `meshca ca rotate --now`)",
            reason="leaves_live",
        )
    gone = [s.moved(SlotState.RETIRED, now) for s in chosen]
    forced = {s.id for s in chosen} - {s.id for s in retirable(keyring, now, policy)}
    return keyring.replacing(*gone), [
        Transition.of(s, SlotState.RETIRING, forced=s.id in forced) for s in gone
    ]


class StepKind(StrEnum):
    PREPARE = "prepare"
    ACTIVATE = "activate"
    RETIRE = "retire"


@dataclass(frozen=True, kw_only=True)
class Step:
    kind: StepKind
    at: datetime | None  # None: as soon as the consumers have acknowledged
    new_root: bool = False
    why: str


def scheduled_prepare(keyring: Keyring, policy: RotationPolicy) -> Step | None:
    """When the next slot is due to be prepared, in the self-signed mode (the root key is here)."""
    active = keyring.active
    if active.root_key is None:
        return None  # plugged-in material: the operator supplies the next generation
    if active.signs_with_root:
        return Step(
            kind=StepKind.PREPARE,
            at=active.since,
            why="the root signs leaves itself; a signing CA under it takes over",
        )
    root_due = _point_in_life(active.root, policy.root_rotate_at)
    # A new signing CA must be able to live its full term under the root it is made under.
    root_due = min(root_due, active.root.not_valid_after_utc - policy.signing_ttl)
    signing_due = _point_in_life(active.signing_cert, policy.signing_rotate_at)
    if root_due <= signing_due:
        return Step(
            kind=StepKind.PREPARE,
            at=root_due,
            new_root=True,
            why=f"the root reaches {policy.root_rotate_at:.0%} of its life",
        )
    return Step(
        kind=StepKind.PREPARE,
        at=signing_due,
        why=f"the signing CA reaches {policy.signing_rotate_at:.0%} of its life",
    )


def next_step(keyring: Keyring, policy: RotationPolicy) -> Step | None:
    """The next transition the schedule will make, and when (for status and for the timer)."""
    ends = sorted((s.leaves_end(policy.max_leaf_ttl), s) for s in keyring.retiring)
    if keyring.prepared is not None:
        step = Step(kind=StepKind.ACTIVATE, at=None, why="slot prepared; activates once agents hold its root")
    else:
        step = scheduled_prepare(keyring, policy)  # type: ignore[assignment]
    if ends and (step is None or step.at is None or ends[0][0] <= step.at):
        return Step(kind=StepKind.RETIRE, at=ends[0][0], why=f"the last leaf of slot {ends[0][1].id} expires")
    return step


def due_step(keyring: Keyring, now: datetime, policy: RotationPolicy, acks: AckSource) -> Step | None:
    """The transition to make now, if any."""
    if retirable(keyring, now, policy):
        return Step(kind=StepKind.RETIRE, at=now, why="the last leaf of a retiring slot has expired")
    if keyring.prepared is not None:
        check = activation_check(keyring, now, policy, acks)
        return Step(kind=StepKind.ACTIVATE, at=now, why=check.why) if check.ready else None
    step = scheduled_prepare(keyring, policy)
    if step is not None and step.at is not None and now >= step.at:
        return step
    return None


@dataclass(frozen=True)
class StoredKeyring:
    keyring: Keyring
    version: str  # changes whenever the stored keyring does


def document_version(files: Mapping[str, bytes]) -> str:
    return hashlib.sha256(files[KEYRING_DOCUMENT]).hexdigest()


# The keyring as a flat mapping of names to bytes: the same document is a directory of files
# (state directory) or the data of a Kubernetes Secret.


def _names(slot_id: str) -> dict[str, str]:
    return {
        part: f"slot-{slot_id}.{part}"
        for part in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem", "root-key.pem")
    }


def keyring_document(keyring: Keyring) -> dict[str, bytes]:
    entries = []
    files: dict[str, bytes] = {}
    for slot in keyring.slots:
        entries.append({"id": slot.id, "state": str(slot.state), "since": slot.since.isoformat()})
        names = _names(slot.id)
        files[names["ca-cert.pem"]] = cert_pem(slot.signing_cert).encode()
        files[names["cert-chain.pem"]] = "".join(cert_pem(c) for c in slot.authority.chain[1:]).encode()
        files[names["root-cert.pem"]] = "".join(cert_pem(r) for r in slot.authority.roots).encode()
        files[names["ca-key.pem"]] = private_key_pem(slot.authority.signing_key)
        if slot.root_key is not None:
            files[names["root-key.pem"]] = private_key_pem(slot.root_key)
    files[KEYRING_DOCUMENT] = json.dumps({"format": KEYRING_FORMAT, "slots": entries}, indent=2).encode()
    return files


def load_keyring(files: Mapping[str, bytes], source: str) -> Keyring:
    try:
        document = json.loads(files[KEYRING_DOCUMENT])
        if document.get("format") != KEYRING_FORMAT:
            raise CaMaterialError(
                f"{source}: CA keyring format {document.get('format')!r} is not {KEYRING_FORMAT}; "
                "run the meshca version that wrote it"
            )
        slots = tuple(_load_slot(files, entry, source) for entry in document["slots"])
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, CaMaterialError):
            raise
        raise CaMaterialError(
            f"{source}: the CA keyring is incomplete or damaged ({type(err).__name__}: {err}); "
            "restore it from a backup"
        ) from err
    return Keyring(slots)


def _load_slot(files: Mapping[str, bytes], entry: Mapping[str, str], source: str) -> Slot:
    slot_id, state = str(entry["id"]), SlotState(entry["state"])
    names = _names(slot_id)
    where = f"{source} slot {slot_id}"
    signing = load_pem_certificates(files[names["ca-cert.pem"]], f"{where} ca-cert.pem")[0]
    chain_pem = files.get(names["cert-chain.pem"], b"")
    above = load_pem_certificates(chain_pem, f"{where} cert-chain.pem") if chain_pem.strip() else []
    roots = load_pem_certificates(files[names["root-cert.pem"]], f"{where} root-cert.pem")
    since = datetime.fromisoformat(entry["since"])
    if state is SlotState.RETIRED:
        raise CaMaterialError(f"{where} is retired; a keyring keeps only slots in use")
    key = load_private_key_pem(files[names["ca-key.pem"]], f"{where} ca-key.pem")
    root_key_pem = files.get(names["root-key.pem"])
    root_key = load_private_key_pem(root_key_pem, f"{where} root-key.pem") if root_key_pem else None
    authority = SigningAuthority.from_parts(
        signing_cert=signing, signing_key=key, cert_chain=[signing, *above], roots=roots, source=where
    )
    return Slot(id=slot_id, state=state, authority=authority, since=since, root_key=root_key)


@dataclass(frozen=True, kw_only=True)
class SlotCertificates:
    """A stored slot's certificates without its keys: what an audit may read."""

    id: str
    state: SlotState
    since: datetime
    signing: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # above the signing certificate, below the roots
    roots: tuple[x509.Certificate, ...]


def slot_certificates(files: Mapping[str, bytes], source: str) -> tuple[SlotCertificates, ...]:
    """Each slot of a stored keyring with its certificates; never reads a key file, so the
    certificates (mode 0644) can be audited by someone who may not read the keys."""
    try:
        document = json.loads(files[KEYRING_DOCUMENT])
        found = []
        for entry in document["slots"]:
            slot_id = str(entry["id"])
            names, where = _names(slot_id), f"{source} slot {slot_id}"
            chain_pem = files.get(names["cert-chain.pem"], b"")
            found.append(
                SlotCertificates(
                    id=slot_id,
                    state=SlotState(entry["state"]),
                    since=datetime.fromisoformat(entry["since"]),
                    signing=load_pem_certificates(files[names["ca-cert.pem"]], f"{where} ca-cert.pem")[0],
                    chain=tuple(
                        load_pem_certificates(chain_pem, f"{where} cert-chain.pem")
                        if chain_pem.strip()
                        else ()
                    ),
                    roots=tuple(
                        load_pem_certificates(files[names["root-cert.pem"]], f"{where} root-cert.pem")
                    ),
                )
            )
    except (KeyError, TypeError, ValueError) as err:
        raise CaMaterialError(
            f"{source}: the CA keyring is incomplete or damaged ({type(err).__name__}: {err}); "
            "restore it from a backup"
        ) from err
    return tuple(found)
