"""The CA keyring in a cluster: the data of the CA Secret, shared by every replica.

The Secret holds the same flat document as the state directory (`slots.json` and each slot's
PEM files). Writes name the resourceVersion they read, so of two replicas changing the keyring
at once one wins and the other is told to read again. A Secret from before slots (the root in
`ca-cert.pem`/`ca-key.pem`, the layout istiod's self-signed CA writes) is adopted as a keyring of
that root; its old entries stay, so an older meshca or istiod that reads them still finds the root.
A `ca-cert.pem` that is not self-signed (a plugged-in intermediate) is refused: that is --cacerts.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ca.common.clock import Clock
from ca.errors import CaMaterialError, ConfigError, UnavailableError
from ca.issuance.selfsigned import RootFactory, check_trust_domain
from ca.issuance.slots import (
    KEYRING_DOCUMENT,
    Keyring,
    RotationPolicy,
    SlotState,
    StoredKeyring,
    document_version,
    keyring_document,
    load_keyring,
)
from ca.kube.client import CA_CERT_KEY, CA_KEY_KEY, CA_SECRET_TYPE, load_or_create_root_secret

SLOT_PREFIX = "slot-"
KEYRING_CHANGED = "keyring_changed"


class KeyringSecret:
    def __init__(self, api: client.ApiClient, *, namespace: str, name: str) -> None:
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._name = name

    @property
    def where(self) -> str:
        return f"Secret {self._namespace}/{self._name}"

    def load_or_create(
        self, factory: RootFactory, policy: RotationPolicy, clock: Clock
    ) -> tuple[StoredKeyring, str]:
        found = self._get()
        if found is not None and KEYRING_DOCUMENT in (found.data or {}):
            stored = self._stored(found)
            for slot in stored.keyring.slots:
                check_trust_domain(slot.authority, factory.trust_domain)
            return stored, "loaded"
        if found is not None and CA_CERT_KEY in (found.data or {}):
            _check_self_signed(_decoded(found.data)[CA_CERT_KEY], self.where)
            legacy, _ = load_or_create_root_secret(
                self._core.api_client, namespace=self._namespace, name=self._name, factory=factory
            )
            keyring = Keyring.single(legacy, since=clock.now(), root_key=legacy.signing_key)
            return self._first_write(found, keyring, "adopted")
        slot = factory.new_slot("1", signing_ttl=policy.signing_ttl, root_ttl=policy.root_ttl, under=None)
        keyring = Keyring((slot.moved(SlotState.ACTIVE, slot.since),))
        if found is not None:  # made beforehand without CA material (by a chart, say): fill it
            return self._first_write(found, keyring, "created")
        created = self._create(keyring)
        if created is not None:
            return created, "created"
        again = self._get()
        if again is not None and KEYRING_DOCUMENT in (again.data or {}):
            return self._stored(again), "loaded"  # another replica created it first: use theirs
        raise UnavailableError(
            f"could not create or read {self.where}; check meshca's RBAC for Secrets there",
            reason="kubernetes_unavailable",
        )

    def _first_write(self, found: client.V1Secret, keyring: Keyring, what: str) -> tuple[StoredKeyring, str]:
        """Write the first keyring into an existing Secret; when another replica wrote one first
        (both started at once), use theirs."""
        try:
            return self._replace(found, keyring), what
        except ConfigError as err:
            if err.reason != KEYRING_CHANGED:
                raise
            stored = self.read()
            if stored is None:
                raise
            return stored, "loaded"

    def read(self) -> StoredKeyring | None:
        found = self._get()
        if found is None or KEYRING_DOCUMENT not in (found.data or {}):
            return None
        return self._stored(found)

    def version(self) -> str | None:
        found = self._get()
        if found is None or KEYRING_DOCUMENT not in (found.data or {}):
            return None
        return document_version(_decoded(found.data))

    def save(self, keyring: Keyring, expected_version: str) -> StoredKeyring:
        found = self._get()
        files = _decoded(found.data if found is not None else None)
        if found is None or KEYRING_DOCUMENT not in files or document_version(files) != expected_version:
            raise _changed(self.where)
        return self._replace(found, keyring)

    def _stored(self, secret: client.V1Secret) -> StoredKeyring:
        files = _decoded(secret.data)
        return StoredKeyring(load_keyring(files, self.where), document_version(files))

    def _get(self) -> client.V1Secret | None:
        try:
            return self._core.read_namespaced_secret(self._name, self._namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise UnavailableError(
                f"reading {self.where} failed (HTTP {err.status} {err.reason}); "
                "check meshca's RBAC for Secrets in that namespace",
                reason="kubernetes_unavailable",
            ) from err

    def _create(self, keyring: Keyring) -> StoredKeyring | None:
        files = keyring_document(keyring)
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=self._name, namespace=self._namespace),
            type=CA_SECRET_TYPE,
            data=_encoded(files),
        )
        try:
            self._core.create_namespaced_secret(self._namespace, body)
        except ApiException as err:
            if err.status == 409:
                return None
            raise UnavailableError(
                f"creating {self.where} failed (HTTP {err.status} {err.reason})",
                reason="kubernetes_unavailable",
            ) from err
        return StoredKeyring(keyring, document_version(files))

    def _replace(self, found: client.V1Secret, keyring: Keyring) -> StoredKeyring:
        files = keyring_document(keyring)
        kept = {
            k: v
            for k, v in (found.data or {}).items()
            if k in (CA_CERT_KEY, CA_KEY_KEY) or not (k.startswith(SLOT_PREFIX) or k == KEYRING_DOCUMENT)
        }
        found.data = {**kept, **_encoded(files)}
        try:
            self._core.replace_namespaced_secret(self._name, self._namespace, found)
        except ApiException as err:
            if err.status == 409:
                raise _changed(self.where) from err
            raise UnavailableError(
                f"updating {self.where} failed (HTTP {err.status} {err.reason}); "
                "check meshca's RBAC (update on Secrets in the CA namespace)",
                reason="kubernetes_unavailable",
            ) from err
        return StoredKeyring(keyring, document_version(files))


def _check_self_signed(cert_pem: bytes, where: str) -> None:
    """Only a self-signed root is adopted. A Secret whose `ca-cert.pem` is issued by another CA
    (Istio's plugged-in `cacerts` layout: an intermediate, with its root in `root-cert.pem`) is
    refused with the way to use it instead. A `ca-cert.pem` that does not parse is left to the
    loader, which says so."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return
    try:
        if cert.issuer == cert.subject:
            cert.verify_directly_issued_by(cert)
            return
    except (ValueError, TypeError, InvalidSignature):
        pass
    raise CaMaterialError(
        f"{where} holds in ca-cert.pem a CA certificate issued by {cert.issuer.rfc4514_string()!r}, "
        "not a self-signed root, so meshca does not adopt it; a plugged-in CA (Istio's cacerts) is "
        "given with --cacerts DIR (mount that Secret as the directory)"
    )


def _changed(where: str) -> ConfigError:
    return ConfigError(
        f"the CA keyring in {where} changed while this change was being made (another replica "
        "made a transition); read it again and retry",
        reason=KEYRING_CHANGED,
    )


def _decoded(data: Mapping[str, str | bytes] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


def _encoded(files: Mapping[str, bytes]) -> dict[str, str | bytes]:
    return {k: base64.b64encode(v).decode() for k, v in files.items()}
