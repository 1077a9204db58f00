"""The CA's refusals of an admin call as meshca errors (each kind, with what to do), and files
that cannot be read as usage errors. The calls over a real CA are in tests/rotate/test_client.py
and tests/server/test_ca_keys_api.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from ca.common.admin_endpoint import AdminEndpoint
from ca.errors import ConfigError, ErrorKind, MeshcaError
from ca.net.admin_channel import admin_call, admin_channel, refusal

ADDRESS = "ca:15443"


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "kind", "reason", "says"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, ErrorKind.PERMISSION_DENIED, "admin_denied", "refused: no"),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            ErrorKind.UNAUTHENTICATED,
            "unauthenticated",
            "give --cert and --key",
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, ErrorKind.INVALID_ARGUMENT, "invalid_argument", "refused: no"),
        (grpc.StatusCode.NOT_FOUND, ErrorKind.INVALID_ARGUMENT, "not_found", "refused: no"),
        (grpc.StatusCode.UNIMPLEMENTED, ErrorKind.UNAVAILABLE, "unimplemented", "does not serve the CaKeys"),
        (grpc.StatusCode.UNAVAILABLE, ErrorKind.UNAVAILABLE, "ca_unavailable", "check --ca-addr"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ErrorKind.UNAVAILABLE, "ca_unavailable", "cannot reach"),
        (grpc.StatusCode.INTERNAL, ErrorKind.INTERNAL, "internal", "(INTERNAL)"),
    ],
)
def test_each_refusal(code: grpc.StatusCode, kind: ErrorKind, reason: str, says: str) -> None:
    err = refusal(Failed(code, "no"), ADDRESS, "CaKeys")
    assert (err.kind, err.reason) == (kind, reason)
    assert says in err.message and ADDRESS in err.message


def test_a_failed_call_raises_the_refusal_and_a_good_one_returns_the_answer() -> None:
    def fails(request: Any, timeout: float) -> str:
        raise Failed(grpc.StatusCode.PERMISSION_DENIED, "not an admin")

    with pytest.raises(MeshcaError, match="refused: not an admin") as caught:
        admin_call(fails, "request", address=ADDRESS, service="CaKeys")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    seen: list[float] = []

    def answers(request: str, timeout: float) -> str:
        seen.append(timeout)
        return request.upper()

    assert admin_call(answers, "ok", address=ADDRESS, service="CaKeys", timeout_s=5.0) == "OK"
    assert seen == [5.0]


def test_files_that_cannot_be_read_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_text("root")
    endpoint = AdminEndpoint(
        address=ADDRESS,
        cert=tmp_path / "missing.pem",
        key=tmp_path / "root.pem",
        ca_root=tmp_path / "root.pem",
        server_name=None,
    )
    with pytest.raises(ConfigError, match=r"cannot read --cert .*missing\.pem \(No such file"):
        admin_channel(endpoint)
