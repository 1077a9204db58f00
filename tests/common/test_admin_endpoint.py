"""The admin connection flags of the operator commands: what they parse to, and the usage error
for --ca-addr without a client certificate."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ca.common.admin_endpoint import ADMIN_FLAGS, AdminEndpoint, add_admin_flags, admin_endpoint
from ca.errors import ConfigError, ErrorKind


def _parse(*argv: str, environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_admin_flags(parser, environ or {}, without="without it, the state directory")
    return parser.parse_args(argv)


def test_no_ca_addr_means_no_endpoint() -> None:
    assert admin_endpoint(_parse()) is None
    assert admin_endpoint(_parse("--ca-addr", "  ")) is None


def test_the_endpoint_from_the_flags() -> None:
    args = _parse(
        "--ca-addr",
        "meshca.istio-system:15443",
        "--cert",
        "a.pem",
        "--key",
        "a.key",
        "--ca-root",
        "root.pem",
        "--ca-server-name",
        "meshca",
    )
    assert admin_endpoint(args) == AdminEndpoint(
        address="meshca.istio-system:15443",
        cert=Path("a.pem"),
        key=Path("a.key"),
        ca_root=Path("root.pem"),
        server_name="meshca",
    )


def test_the_environment_and_defaults() -> None:
    environ = {"MESHCA_CA_ADDR": "ca:15443", "MESHCA_CERT": "c.pem", "MESHCA_KEY": "k.pem"}
    endpoint = admin_endpoint(_parse(environ=environ))
    assert endpoint is not None and endpoint.address == "ca:15443"
    assert endpoint.ca_root == Path("./meshca-state/root-cert.pem") and endpoint.server_name is None


@pytest.mark.parametrize(
    "missing", [["--cert", "c.pem"], ["--key", "k.pem"], ["--cert", "off", "--key", "k"]]
)
def test_ca_addr_without_a_client_certificate_is_a_usage_error(missing: list[str]) -> None:
    with pytest.raises(ConfigError, match="--ca-addr needs --cert and --key") as caught:
        admin_endpoint(_parse("--ca-addr", "ca:15443", *missing))
    assert caught.value.kind is ErrorKind.CONFIG


def test_every_flag_is_named() -> None:
    parser = argparse.ArgumentParser()
    add_admin_flags(parser, {}, without="w")
    assert {
        f for a in parser._actions for f in a.option_strings if f.startswith("--ca") or f in ADMIN_FLAGS
    } == set(ADMIN_FLAGS)
