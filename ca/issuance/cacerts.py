"""A plugged-in CA from a directory in Istio's `cacerts` layout (REFERENCE §4)."""

from __future__ import annotations

from pathlib import Path

from ca.errors import CaMaterialError
from ca.issuance.authority import SigningAuthority, load_pem_certificates
from ca.issuance.keys import load_private_key_pem

ISTIO_FILES = ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")
TLS_FILES = ("tls.crt", "tls.key", "ca.crt")


def load_cacerts_dir(directory: Path) -> SigningAuthority:
    if not directory.is_dir():
        raise CaMaterialError(f"--cacerts {directory} is not a directory")
    present = {name for name in (*ISTIO_FILES, *TLS_FILES) if (directory / name).is_file()}
    istio = present & set(ISTIO_FILES)
    if istio:
        if istio != set(ISTIO_FILES):
            missing = ", ".join(sorted(set(ISTIO_FILES) - istio))
            raise CaMaterialError(
                f"{directory} has only part of a plugged-in CA: {missing} missing; "
                f"provide all four of {', '.join(ISTIO_FILES)}"
            )
        return _load_istio_layout(directory)
    if present == set(TLS_FILES):
        return _load_tls_layout(directory)
    raise CaMaterialError(
        f"{directory} holds no CA: expected {', '.join(ISTIO_FILES)} (or {', '.join(TLS_FILES)})"
    )


def _certs(directory: Path, name: str) -> list:  # type: ignore[type-arg]
    return load_pem_certificates((directory / name).read_bytes(), str(directory / name))


def _load_istio_layout(directory: Path) -> SigningAuthority:
    signing = _certs(directory, "ca-cert.pem")[0]
    key = load_private_key_pem((directory / "ca-key.pem").read_bytes(), str(directory / "ca-key.pem"))
    return SigningAuthority.from_parts(
        signing_cert=signing,
        signing_key=key,
        cert_chain=_certs(directory, "cert-chain.pem"),
        roots=_certs(directory, "root-cert.pem"),
        source=str(directory),
    )


def _load_tls_layout(directory: Path) -> SigningAuthority:
    tls_chain = _certs(directory, "tls.crt")
    key = load_private_key_pem((directory / "tls.key").read_bytes(), str(directory / "tls.key"))
    return SigningAuthority.from_parts(
        signing_cert=tls_chain[0],
        signing_key=key,
        cert_chain=tls_chain,
        roots=_certs(directory, "ca.crt"),
        source=str(directory),
    )
