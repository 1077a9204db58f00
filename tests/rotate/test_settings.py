"""Bad input to `meshca rotate` and `meshca revoke` is a usage error (exit 2) that says what is
wrong and what to do, and nothing is written: checked through `ca.cli.main.main` against a real
ledger that must stay as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.operator import State, operator_state, run


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[State]:
    with operator_state(tmp_path_factory.mktemp("settings") / "state") as made:
        yield made


BAD_ROTATIONS = [
    pytest.param(["--reason", "r"], "no selector given; name what to rotate", id="empty-selector"),
    pytest.param(
        ["--all", "--namespace", "shop", "--reason", "r"], "--all cannot be combined", id="all-and-more"
    ),
    pytest.param(
        ["--namespace", "shop"], "an order needs a reason; say why with --reason TEXT", id="no-reason"
    ),
    pytest.param(["--namespace", "shop", "--reason", "  "], "an order needs a reason", id="blank-reason"),
    pytest.param(
        ["--namespace", "shop", "--reason", "r", "--grace", "-5m"],
        "negative",
        id="negative-grace",
    ),
    pytest.param(
        ["--namespace", "shop", "--reason", "r", "--grace", "-5m", "--dry-run"],
        "negative",
        id="negative-grace-dry-run",
    ),
    pytest.param(
        ["--namespace", "shop", "--reason", "r", "--grace", "soon"],
        "--grace: 'soon' is not a duration",
        id="bad-grace",
    ),
    pytest.param(
        ["--namespace", "shop", "--reason", "r", "--grace", "1m", "--spread", "2m"],
        "--spread must be between 0s and the grace period",
        id="spread-over-grace",
    ),
    pytest.param(
        ["--serial", "12:zz", "--reason", "r"],
        "'12:zz' is not a certificate serial number; give it in hex, as `openssl x509 -noout -serial`",
        id="malformed-serial",
    ),
    pytest.param(
        ["--issued-before", "last tuesday", "--reason", "r"],
        "--issued-before 'last tuesday' is not a time",
        id="bad-time",
    ),
    pytest.param(
        ["--namespace", "shop", "--reason", "r", "--restart-workloads"],
        "--restart-workloads needs cluster access: give --kubeconfig, or order through the CA",
        id="restart-without-cluster",
    ),
    pytest.param(
        ["--namespace", "shop", "--reason", "r", "--ca-addr", "localhost:15443"],
        "--ca-addr needs --cert and --key",
        id="ca-without-client-cert",
    ),
    pytest.param(
        ["--namespace", "shop", "--reason", "r", "--ledger", "off"],
        "--ledger off leaves nowhere",
        id="ledger-off",
    ),
    pytest.param(
        ["--namespace", "shop", "--reason", "r", "--grace"], "expected one argument", id="flag-without-value"
    ),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ROTATIONS)
def test_bad_orders_are_usage_errors(
    state: State, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "rotate", *argv, *state.flags)
    assert (code, out) == (2, "")
    assert message in err
    if message == "negative":  # refused as the command line is read, or by the order's terms
        assert "--grace" in err
    assert state.records("rotation_order") == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["status", "order-7"], "'order-7' is not an order id; order ids look like ro-", id="order-id"
        ),
        pytest.param(["status"], "the following arguments are required: ORDER", id="no-order-id"),
        pytest.param(["list", "--limit", "0"], "limit 0 is out of range", id="limit-zero"),
        pytest.param(["list", "--limit", "many"], "--limit must be a whole number", id="limit-word"),
        pytest.param(
            ["list", "--reason", "x"], "unrecognized arguments: --reason x", id="order-flag-on-list"
        ),
    ],
)
def test_bad_status_and_list_requests(
    state: State, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "rotate", *argv, *state.flags)
    assert (code, out) == (2, "") and message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param([], "the following arguments are required: --serial", id="no-serial"),
        pytest.param(["--serial", "xyz"], "'xyz' is not a certificate serial number", id="malformed-serial"),
        pytest.param(
            ["--serial", "ab", "--reason", "stolen"],
            "unknown revocation reason 'stolen'; use one of unspecified, keyCompromise",
            id="unknown-reason",
        ),
    ],
)
def test_bad_revocations_are_usage_errors(
    state: State, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "revoke", *argv, *state.flags)
    assert (code, out) == (2, "") and message in err
    assert state.records("revoked") == []


def test_connection_flags_go_before_or_after_the_action(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    before = run(capsys, "rotate", *state.flags, "list", "-o", "json")
    after = run(capsys, "rotate", "list", *state.flags, "-o", "json")
    assert before[0] == after[0] == 0 and before[1] == after[1] == '{"orders": []}\n'


def test_environment_defaults(
    state: State, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHCA_STATE_DIR", str(state.directory))
    monkeypatch.setenv("MESHCA_GRACE", "-1m")
    code, _, err = run(capsys, "rotate", "--namespace", "shop", "--reason", "r")
    assert code == 2 and "--grace must not be negative" in err
    code, out, _ = run(capsys, "rotate", "list", "-o", "json")
    assert (code, out) == (0, '{"orders": []}\n')


def test_a_missing_client_certificate_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "rotate",
        "list",
        "--ca-addr",
        "localhost:15443",
        "--cert",
        str(tmp_path / "cert.pem"),
        "--key",
        str(tmp_path / "key.pem"),
        "--ca-root",
        str(tmp_path / "root.pem"),
    )
    assert code == 2 and f"cannot read --ca-root {tmp_path / 'root.pem'}" in err
