from __future__ import annotations

import shlex
from datetime import timedelta
from pathlib import Path

import pytest

from ca.errors import UnavailableError
from ca.policy.manifest import load_manifests
from ca.policy.model import MtlsMode, Workload
from ca.policy.resolve import resolve
from ca.sandbox.plan import (
    DEFAULT_POLICIES,
    DEMO_WORKLOADS,
    CaPorts,
    DemoWorkload,
    EnforcerPorts,
    Layout,
    Plan,
    app_port,
    ca_ports,
    enforcer_ports,
    guide,
    start_order,
)

ROOT = Path("/sandbox")


def make_plan(ttl: timedelta = timedelta(minutes=4)) -> Plan:
    return Plan(
        layout=Layout(ROOT),
        meshca=("py", "-m", "ca.cli"),
        python="py",
        cert_ttl=ttl,
        call_interval=timedelta(milliseconds=250),
    )


def flag(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_enforcers_start_callees_first() -> None:
    assert [w.name for w in start_order(DEMO_WORKLOADS)] == ["db", "api", "web"]


def test_the_caller_without_a_certificate_has_no_enforcer_to_start() -> None:
    assert "legacy" not in [w.name for w in start_order(DEMO_WORKLOADS)]


def test_a_cycle_of_calls_cannot_be_started() -> None:
    cycle = (DemoWorkload(name="a", calls=("b",)), DemoWorkload(name="b", calls=("a",)))
    with pytest.raises(ValueError, match="cycle"):
        start_order(cycle)


def test_a_call_to_no_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="ghost"):
        start_order((DemoWorkload(name="a", calls=("ghost",)),))


def test_the_ca_listens_on_loopback_ports_it_picks_and_reports() -> None:
    spec = make_plan().ca()
    assert spec.argv[:4] == ("py", "-m", "ca.cli", "serve")
    for name in ("--listen", "--renew-listen", "--metrics-listen"):
        assert flag(spec.argv, name) == "127.0.0.1:0"
    assert flag(spec.argv, "--state-dir") == str(ROOT / "ca")
    assert spec.ports_file == Path(flag(spec.argv, "--ports-file"))


def test_a_token_goes_to_the_workloads_token_file() -> None:
    spec = make_plan().token(DEMO_WORKLOADS[0])
    assert flag(spec.argv, "--service-account") == "web"
    assert flag(spec.argv, "--namespace") == "demo"
    assert spec.stdout == ROOT / "workloads" / "web" / "token"


def test_the_agent_asks_for_the_short_lifetime_and_renews_at_half_without_jitter() -> None:
    spec = make_plan(timedelta(seconds=90)).agent(
        DEMO_WORKLOADS[1], CaPorts(grpc=1001, renew=1002, metrics=1003)
    )
    assert flag(spec.argv, "--ca-addr") == "127.0.0.1:1001"
    assert flag(spec.argv, "--ca-control-addr") == "127.0.0.1:1002"
    assert flag(spec.argv, "--ttl") == "90s"
    assert (flag(spec.argv, "--rotation-ratio"), flag(spec.argv, "--rotation-jitter")) == ("0.5", "0")
    assert flag(spec.argv, "--output-dir") == str(ROOT / "workloads" / "api" / "certs")


def test_renewal_is_expected_half_a_lifetime_before_expiry() -> None:
    assert make_plan(timedelta(minutes=4)).renew_before_expiry() == timedelta(minutes=2)


def test_the_enforcer_pins_each_callee_to_its_spiffe_id_in_call_order() -> None:
    web = DEMO_WORKLOADS[0]
    spec = make_plan().enforcer(web, 8080, {"api": 2001, "db": 2002})
    outbound = [spec.argv[i + 1] for i, word in enumerate(spec.argv) if word == "--outbound"]
    assert outbound == [
        "0:127.0.0.1:2001=spiffe://cluster.local/ns/demo/sa/api",
        "0:127.0.0.1:2002=spiffe://cluster.local/ns/demo/sa/db",
    ]
    assert flag(spec.argv, "--inbound") == "0:8080/http"
    assert flag(spec.argv, "--labels") == "app=web"
    assert flag(spec.argv, "--policies") == str(ROOT / "policies")


def test_a_meshed_app_calls_through_its_enforcer_and_legacy_calls_the_enforcer_in_plaintext() -> None:
    plan = make_plan()
    own = EnforcerPorts(inbound=3000, outbound=(3001, 3002), metrics=3003)
    assert plan.calls(DEMO_WORKLOADS[0], own, {}) == {
        "api": "http://127.0.0.1:3001/",
        "db": "http://127.0.0.1:3002/",
    }
    assert plan.calls(DEMO_WORKLOADS[3], None, {"web": 3000}) == {"web": "http://127.0.0.1:3000/"}


def test_the_rotate_command_names_the_sandbox_ca_ledger_and_a_reason() -> None:
    words = shlex.split(make_plan().rotate_command(["meshca"]))
    assert words[:2] == ["meshca", "rotate"]
    assert flag(tuple(words), "--namespace") == "demo"
    assert flag(tuple(words), "--state-dir") == str(ROOT / "ca")
    assert flag(tuple(words), "--reason")


def test_ports_files_are_read_into_ports() -> None:
    assert ca_ports({"grpc": 1, "renew": 2, "metrics": 3}) == CaPorts(grpc=1, renew=2, metrics=3)
    document = {
        "inbound": [{"listen_port": 10, "app_port": 8080, "protocol": "http"}],
        "outbound": [{"listen_port": 11, "target": "a"}, {"listen_port": 12, "target": "b"}],
        "metrics": 13,
    }
    assert enforcer_ports(document, "web-enforcer") == EnforcerPorts(
        inbound=10, outbound=(11, 12), metrics=13
    )
    assert app_port({"http": 99}, "web-app") == 99


@pytest.mark.parametrize("document", [{"grpc": 1, "renew": 2}, {"grpc": "1", "renew": 2, "metrics": 3}])
def test_a_ports_file_without_a_port_says_which(document: dict[str, object]) -> None:
    with pytest.raises(UnavailableError, match="the CA"):
        ca_ports(document)


def test_the_guide_gives_the_rotate_command_the_policy_file_and_what_ctrl_c_does() -> None:
    plan = make_plan()
    shown = guide(
        plan,
        program=["meshca"],
        ca=CaPorts(grpc=1, renew=2, metrics=3),
        inbound={"db": 4000},
        processes=11,
        kept=False,
    )
    hints = dict(shown.hints)
    assert hints["rotate every certificate"] == plan.rotate_command(["meshca"])
    assert hints["edit the policies"].startswith(str(ROOT / "policies" / "demo.yaml"))
    assert hints["call without a certificate"].startswith("curl http://127.0.0.1:4000/")
    assert hints["Ctrl-C"] == f"stops the 11 processes started here and removes {ROOT}"
    assert "127.0.0.1:1" in shown.header and "4m" in shown.header
    kept = guide(
        plan, program=["meshca"], ca=CaPorts(grpc=1, renew=2, metrics=3), inbound={}, processes=11, kept=True
    )
    assert dict(kept.hints)["Ctrl-C"].endswith(f"keeps {ROOT}")


def test_the_default_policies_make_web_permissive_and_the_others_strict() -> None:
    policies = load_manifests(DEFAULT_POLICIES)
    modes = {
        w.name: resolve(policies, Workload(namespace="demo", labels={"app": w.name}), None).mode
        for w in DEMO_WORKLOADS
        if w.meshed
    }
    assert modes == {"web": MtlsMode.PERMISSIVE, "api": MtlsMode.STRICT, "db": MtlsMode.STRICT}
    # The edit the comments suggest is one word.
    edited = load_manifests(DEFAULT_POLICIES.replace("mode: PERMISSIVE", "mode: STRICT"))
    assert resolve(edited, Workload(namespace="demo", labels={"app": "web"}), None).mode is MtlsMode.STRICT
