"""Plugged-in CA directories: the Istio cacerts layout and the kubernetes.io/tls layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca.errors import ConfigError
from ca.issuance.cacerts import ISTIO_FILES, load_cacerts_dir
from ca.issuance.keys import private_key_pem
from tests.support.issuing import cacerts_error
from tests.support.pki import Hierarchy, make_hierarchy, pem


def test_istio_layout_with_an_intermediate_loads(hierarchy: Hierarchy, tmp_path: Path) -> None:
    authority = load_cacerts_dir(hierarchy.write_cacerts(tmp_path / "cacerts"))
    assert authority.signing_cert == hierarchy.signing
    assert authority.chain == (hierarchy.signing, hierarchy.intermediate)
    assert authority.roots == (hierarchy.root,)
    assert not authority.is_self_signed
    assert authority.source == str(tmp_path / "cacerts")
    assert authority.response_chain("LEAF") == [
        "LEAF",
        pem(hierarchy.signing).decode(),
        pem(hierarchy.intermediate).decode(),
        pem(hierarchy.root).decode(),
    ]


def test_istio_layout_where_the_root_signs_directly(tmp_path: Path) -> None:
    h = make_hierarchy()
    directory = tmp_path / "cacerts"
    directory.mkdir()
    (directory / "ca-cert.pem").write_bytes(pem(h.root))
    (directory / "ca-key.pem").write_bytes(private_key_pem(h.root_key))
    (directory / "cert-chain.pem").write_bytes(pem(h.root))
    (directory / "root-cert.pem").write_bytes(pem(h.root))
    authority = load_cacerts_dir(directory)
    assert authority.is_self_signed
    assert authority.response_chain("LEAF") == ["LEAF", pem(h.root).decode()]


@pytest.mark.parametrize("missing", ISTIO_FILES)
def test_any_one_missing_istio_file_is_named(missing: str, hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / missing).unlink()
    err = cacerts_error(directory)
    assert missing in err.message
    for present in set(ISTIO_FILES) - {missing}:
        assert f"{present} missing" not in err.message
    assert "all four" in err.message


def _write_tls(directory: Path, h: Hierarchy, *, with_intermediate: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    chain = pem(h.signing) + (pem(h.intermediate) if with_intermediate else b"")
    (directory / "tls.crt").write_bytes(chain)
    (directory / "tls.key").write_bytes(private_key_pem(h.signing_key))
    (directory / "ca.crt").write_bytes(pem(h.root))
    return directory


def test_tls_layout_loads(hierarchy: Hierarchy, tmp_path: Path) -> None:
    authority = load_cacerts_dir(_write_tls(tmp_path / "tls", hierarchy, with_intermediate=True))
    assert authority.signing_cert == hierarchy.signing
    assert authority.chain == (hierarchy.signing, hierarchy.intermediate)
    assert authority.roots == (hierarchy.root,)


def test_tls_layout_without_the_intermediate_does_not_reach_the_root(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    err = cacerts_error(_write_tls(tmp_path / "tls", hierarchy, with_intermediate=False))
    assert "does not lead to any root" in err.message


@pytest.mark.parametrize("missing", ["tls.crt", "tls.key", "ca.crt"])
def test_partial_tls_layout_is_refused(missing: str, hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = _write_tls(tmp_path / "tls", hierarchy, with_intermediate=True)
    (directory / missing).unlink()
    err = cacerts_error(directory)
    assert "holds no CA" in err.message
    assert missing in err.message


def test_garbage_key_file_is_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "ca-key.pem").write_text("not a key\n")
    with pytest.raises(ConfigError) as caught:
        load_cacerts_dir(directory)
    assert "ca-key.pem" in caught.value.message


def test_empty_directory_holds_no_ca(tmp_path: Path) -> None:
    err = cacerts_error(tmp_path)
    assert "holds no CA" in err.message
    for name in ISTIO_FILES:
        assert name in err.message


def test_a_file_is_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "file.pem"
    path.write_text("x")
    err = cacerts_error(path)
    assert "is not a directory" in err.message


def test_a_missing_path_is_not_a_directory(tmp_path: Path) -> None:
    assert "is not a directory" in cacerts_error(tmp_path / "nope").message
