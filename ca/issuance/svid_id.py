"""The SPIFFE ID an X.509-SVID names: exactly one URI SAN (SPIFFE X.509-SVID spec)."""

from __future__ import annotations

from cryptography import x509

from ca.errors import InvalidSpiffeIdError
from ca.issuance.spiffe_id import SpiffeId


def svid_spiffe_id(cert: x509.Certificate) -> SpiffeId:
    """The certificate's SPIFFE ID; InvalidSpiffeIdError saying what is wrong otherwise."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidSpiffeIdError("it has no subject alternative name", reason="svid_invalid") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise InvalidSpiffeIdError(
            f"it has {len(uris)} URI SANs; an X.509-SVID has exactly one", reason="svid_invalid"
        )
    return SpiffeId.parse(uris[0])
