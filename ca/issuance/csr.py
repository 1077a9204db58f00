"""Certificate signing requests: parse, prove possession, apply the key policy.

Pure code. The CSR contributes only its public key; the identity comes from the
authenticated caller. What names the CSR asks for is kept so that strict mode
can refuse a CSR that asks for someone else's identity.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from ca.errors import InvalidRequestError
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.keys import PublicKey, key_type_label

MAX_CSR_BYTES = 32 * 1024
_PEM_MARKERS = ("-----BEGIN CERTIFICATE REQUEST-----", "-----BEGIN NEW CERTIFICATE REQUEST-----")


@dataclass(frozen=True, kw_only=True)
class ParsedCsr:
    public_key: PublicKey
    key_type: str
    requested_uris: tuple[str, ...]
    requested_dns: tuple[str, ...]


def _bad_csr(problem: str, reason: str = "csr_invalid") -> InvalidRequestError:
    return InvalidRequestError(f"bad CSR: {problem}", reason=reason)


def _requested_names(
    csr: x509.CertificateSigningRequest,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as err:
        raise _bad_csr(f"its extensions cannot be parsed ({err})") from err
    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
        if basic.ca:
            raise _bad_csr(
                "it asks for a CA certificate (basicConstraints cA=true); "
                "meshca issues only workload leaf certificates",
                reason="csr_requests_ca",
            )
    except x509.ExtensionNotFound:
        pass
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    dns = tuple(san.get_values_for_type(x509.DNSName))
    return uris, dns


def parse_csr(pem: str, policy: KeyPolicy) -> ParsedCsr:
    """Parse a PEM CSR and check its self-signature and key type.

    Raises InvalidRequestError with a message that names the problem.
    """
    if not pem.strip():
        raise _bad_csr("the request has no CSR; send a PEM certificate signing request", "csr_missing")
    if len(pem) > MAX_CSR_BYTES:
        raise _bad_csr(f"it is {len(pem)} bytes, over the {MAX_CSR_BYTES}-byte limit", "csr_too_large")
    if not any(marker in pem for marker in _PEM_MARKERS):
        raise _bad_csr("it is not PEM; expected a '-----BEGIN CERTIFICATE REQUEST-----' block")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("utf-8", "surrogateescape"))
    except (ValueError, x509.InvalidVersion) as err:
        raise _bad_csr(f"it cannot be decoded ({err})") from err
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as err:
        raise _bad_csr(f"its public key cannot be read ({err})", "key_type_not_allowed") from err
    key = policy.check(public_key)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError) as err:
        raise _bad_csr(f"its signature cannot be checked ({err})", "csr_signature_invalid") from err
    if not signature_ok:
        raise _bad_csr(
            "its self-signature does not verify, so it does not prove possession of the key; "
            "sign the CSR with the private key of the public key it carries",
            "csr_signature_invalid",
        )
    uris, dns = _requested_names(csr)
    return ParsedCsr(public_key=key, key_type=key_type_label(key), requested_uris=uris, requested_dns=dns)
