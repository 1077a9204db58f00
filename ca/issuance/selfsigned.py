"""Creating a new self-signed root. Pure given the injected key generator and clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from ca.common.clock import Clock
from ca.errors import CaMaterialError
from ca.issuance import profile
from ca.issuance.authority import SigningAuthority
from ca.issuance.issuer import SerialSource, random_serial
from ca.issuance.keys import KeyAlgorithm, PrivateKey, generate_private_key
from ca.issuance.slots import Slot, SlotState
from ca.issuance.spiffe_id import SpiffeId

KeyGenerator = Callable[[KeyAlgorithm], PrivateKey]


@dataclass(frozen=True, kw_only=True)
class RootFactory:
    """Makes a new self-signed root for a trust domain."""

    trust_domain: str
    key_algorithm: KeyAlgorithm
    clock: Clock
    serials: SerialSource = random_serial
    generate_key: KeyGenerator = field(default=generate_private_key)

    def create(self, source: str) -> SigningAuthority:
        key = self.generate_key(self.key_algorithm)
        cert = profile.sign(
            profile.self_signed_root(
                key=key, trust_domain=self.trust_domain, serial=self.serials(), now=self.clock.now()
            ),
            key,
        )
        return SigningAuthority(signing_cert=cert, signing_key=key, chain=(), roots=(cert,), source=source)

    def new_slot(
        self,
        slot_id: str,
        *,
        signing_ttl: timedelta,
        root_ttl: timedelta,
        under: Slot | None = None,
    ) -> Slot:
        """A prepared slot: a signing CA under `under`'s root (its key must be here), or under a
        new root when `under` is None."""
        now = self.clock.now()
        if under is None:
            root_key = self.generate_key(self.key_algorithm)
            root = profile.sign(
                profile.self_signed_root(
                    key=root_key,
                    trust_domain=self.trust_domain,
                    serial=self.serials(),
                    now=now,
                    validity=root_ttl,
                ),
                root_key,
            )
        elif under.root_key is None:
            raise CaMaterialError(
                f"slot {under.id}'s root key is not held by meshca (plugged-in CA material); "
                "put the next generation's files in place instead"
            )
        else:
            root, root_key = under.root, under.root_key
        return Slot(
            id=slot_id,
            state=SlotState.PREPARED,
            authority=self._signing_ca(root, root_key, now, signing_ttl, source=f"signing slot {slot_id}"),
            since=now,
            root_key=root_key,
        )

    def _signing_ca(
        self, root: x509.Certificate, root_key: PrivateKey, now: datetime, ttl: timedelta, *, source: str
    ) -> SigningAuthority:
        key = self.generate_key(self.key_algorithm)
        not_before, not_after = profile.leaf_validity(now=now, ttl=ttl, issuer=root)
        cert = profile.sign(
            profile.intermediate_ca(
                subject_key=key.public_key(),
                trust_domain=self.trust_domain,
                issuer=root,
                serial=self.serials(),
                not_before=not_before,
                not_after=not_after,
            ),
            root_key,
        )
        return SigningAuthority(
            signing_cert=cert, signing_key=key, chain=(cert,), roots=(root,), source=source
        )


def root_trust_domain(cert: x509.Certificate) -> str | None:
    """The trust domain a CA certificate names in its SPIFFE URI SAN, if it names one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return SpiffeId.parse(uri).trust_domain
    return None


def check_trust_domain(authority: SigningAuthority, trust_domain: str) -> SigningAuthority:
    named = root_trust_domain(authority.signing_cert)
    if named is not None and named != trust_domain:
        raise CaMaterialError(
            f"{authority.source} holds a root for trust domain {named!r}, but meshca is configured "
            f"for {trust_domain!r}; set --trust-domain {named} or point meshca at the right state"
        )
    return authority
