"""SPIFFE IDs: parse, build and validate (SPIFFE ID spec; REFERENCE §3).

Pure code: no I/O. A mesh workload's ID is
`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ca.errors import ConfigError, InvalidSpiffeIdError

SCHEME = "spiffe://"
MAX_URI_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TRUST_DOMAIN_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def _invalid(uri: str, problem: str) -> InvalidSpiffeIdError:
    shown = uri if len(uri) <= 120 else uri[:117] + "..."
    return InvalidSpiffeIdError(
        f"invalid SPIFFE ID {shown!r}: {problem}; "
        "expected spiffe://<trust-domain>/<path> as in spiffe://cluster.local/ns/default/sa/web",
        reason="invalid_spiffe_id",
    )


def validate_trust_domain(name: str) -> str:
    """Return `name` if it is a valid trust domain name, else raise."""
    if not name:
        raise _invalid(SCHEME, "the trust domain is empty")
    if len(name.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise _invalid(SCHEME + name, f"the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if not _TRUST_DOMAIN_CHARS.fullmatch(name):
        raise _invalid(
            SCHEME + name,
            "the trust domain may hold only lowercase letters, digits, '.', '-' and '_'",
        )
    return name


def _validate_path(uri: str, path: str) -> None:
    if path == "":
        return
    if not path.startswith("/"):
        raise _invalid(uri, "the path must start with '/'")
    for segment in path[1:].split("/"):
        if segment == "":
            raise _invalid(uri, "the path has an empty segment or a trailing '/'")
        if segment in (".", ".."):
            raise _invalid(uri, "the path may not contain '.' or '..' segments")
        if not _SEGMENT_CHARS.fullmatch(segment):
            raise _invalid(uri, f"path segment {segment!r} may hold only letters, digits, '.', '-' and '_'")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A valid SPIFFE ID, `spiffe://<trust domain><path>`: checked as it is made."""

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _validate_path(self.uri, self.path)
        if len(self.uri.encode()) > MAX_URI_BYTES:
            raise _invalid(self.uri, f"the ID is longer than {MAX_URI_BYTES} bytes")

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if len(uri.encode("utf-8", "surrogatepass")) > MAX_URI_BYTES:
            raise _invalid(uri, f"the ID is longer than {MAX_URI_BYTES} bytes")
        if not uri.startswith(SCHEME):
            raise _invalid(uri, "the scheme must be 'spiffe://' in lowercase")
        rest = uri[len(SCHEME) :]
        for char, what in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
            if char in rest:
                raise _invalid(uri, f"a SPIFFE ID may not contain {what}")
        trust_domain, slash, path = rest.partition("/")
        if "@" in trust_domain:
            raise _invalid(uri, "the trust domain may not contain userinfo")
        if ":" in trust_domain:
            raise _invalid(uri, "the trust domain may not contain a port")
        return cls(trust_domain, slash + path)

    @classmethod
    def for_workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        path = f"/ns/{namespace}/sa/{service_account}"
        if "/" in namespace or "/" in service_account:
            raise _invalid(SCHEME + trust_domain + path, "a namespace or service account may not contain '/'")
        return cls(trust_domain, path)

    def workload(self) -> tuple[str, str] | None:
        """(namespace, service account) if this is a mesh workload ID, else None."""
        parts = self.path.split("/")
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            return parts[2], parts[4]
        return None

    def is_member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain


def trust_domain_flag(text: str) -> str:
    """The value of `--trust-domain`, checked as a SPIFFE trust domain name."""
    try:
        return validate_trust_domain(text)
    except InvalidSpiffeIdError as err:
        raise ConfigError(
            f"--trust-domain {text!r} is not a valid SPIFFE trust domain: use lowercase letters, digits, "
            "'.', '-' and '_', as in cluster.local"
        ) from err
