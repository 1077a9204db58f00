"""Why a TLS handshake with the CA failed, found by a handshake of our own.

gRPC reports a failed handshake as UNAVAILABLE with free text whose wording changes
between versions. When that text points at TLS, the agent repeats the handshake with
Python's ssl module, the same root file and the same expected name, and reads
OpenSSL's verification result, which is structured. Only a verification failure found
that way is reported as one; anything else (the CA down, a reset, a timeout) stays the
UNAVAILABLE it was.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from ca.errors import ConfigError

_TLS_WORDS = ("handshake", "certificate", "verif", "ssl", "tls")
# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that are not about the chain.
_NAME_MISMATCH = frozenset({62, 63, 64})  # host name, email, IP address
_NOT_VALID_NOW = frozenset({9, 10})  # not yet valid, expired


class CaNotTrustedError(ConfigError):
    """The CA's TLS certificate does not verify against the agent's --ca-root file."""


def points_at_tls(details: str | None) -> bool:
    """Whether gRPC's text for an UNAVAILABLE call mentions TLS at all."""
    text = (details or "").lower()
    return any(word in text for word in _TLS_WORDS)


def split_target(address: str) -> tuple[str, int] | None:
    """`host:port`, `dns:///host:port` or `[v6]:port` -> (host, port); None if not one of those."""
    target = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def verification_failure(
    address: str, root_file: Path, root_pem: bytes, server_name: str | None, timeout_s: float
) -> ConfigError | None:
    """The error to report if a TLS handshake with `address`, trusting only `root_pem` and
    expecting `server_name` (else the address's host), fails verification; None otherwise."""
    target = split_target(address)
    if target is None:
        return None
    host, port = target
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    context.set_alpn_protocols(["h2"])
    try:
        context.load_verify_locations(cadata=root_pem.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError):
        return CaNotTrustedError(
            f"--ca-root {root_file} holds no PEM certificate; set --ca-root to the CA's root-cert.pem",
            reason="ca_root_unusable",
        )
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as sock,
            context.wrap_socket(sock, server_hostname=server_name or host),
        ):
            return None
    except ssl.SSLCertVerificationError as err:
        return _explain(err, address=address, root_file=root_file, name=server_name or host)
    except OSError:  # ssl.SSLError included: a handshake that failed for another reason
        return None


def _explain(err: ssl.SSLCertVerificationError, *, address: str, root_file: Path, name: str) -> ConfigError:
    code, why = err.verify_code, err.verify_message
    if code in _NAME_MISMATCH:
        return ConfigError(
            f"the CA at {address} presents a certificate that is not for {name!r} ({why}); set "
            "--ca-server-name to a name the CA's certificate carries (its `meshca serve --dns-names`)",
            reason="ca_name_mismatch",
        )
    if code in _NOT_VALID_NOW:
        return CaNotTrustedError(
            f"the CA at {address} presents a certificate that is not valid now ({why}); check the "
            "clocks of this host and the CA, and that the CA's certificates are current",
            reason="ca_certificate_not_valid_now",
        )
    return CaNotTrustedError(
        f"the CA at {address} presents a certificate that does not chain to the root(s) in "
        f"--ca-root {root_file} ({why}); set --ca-root to this CA's root-cert.pem (in its state "
        "directory, or the istio-ca-root-cert ConfigMap in a cluster)",
        reason="ca_untrusted",
    )
