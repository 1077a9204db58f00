"""`meshca policy explain` through the real CLI entry point."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ca.cli.main import main
from tests.support.fake_apiserver import FakeKubeApiServer

POLICIES = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: UNSET}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: web, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    8080: {mode: DISABLE}
    9090: {mode: UNSET}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: web-newer, namespace: shop, creationTimestamp: "2024-03-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: root-selector, namespace: istio-system}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: DISABLE}
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "all.yaml").write_text(POLICIES)
    return directory


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["policy", "explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_shows_each_port_and_why(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = explain(
        capsys,
        "--namespace",
        "shop",
        "--labels",
        "app=web",
        "--port",
        "8080,9090",
        "--policies",
        str(policy_dir),
    )
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert ["8080", "DISABLE", "port", "shop/web"] in rows
    assert ["9090", "PERMISSIVE", "workload", "shop/web"] in rows  # UNSET port inherits the workload
    assert ["other", "PERMISSIVE", "workload", "shop/web"] in rows
    assert any(r[:2] == ["mesh", "istio-system/default"] and r[-1] == "applies" for r in rows)
    assert any(r[:2] == ["namespace", "shop/default"] and r[-1] == "inherits" for r in rows)
    assert any(r[:2] == ["workload", "shop/web-newer"] and r[-1] == "shadowed" for r in rows)
    assert any(r[:2] == ["ignored", "istio-system/root-selector"] and r[-1] == "ignored" for r in rows)
    assert "  shop/web-newer: shop/web wins this scope (it is older)" in out.splitlines()
    assert max(len(line) for line in out.splitlines() if str(policy_dir) not in line) <= 110


def test_json_output(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(
        capsys,
        "--namespace",
        "shop",
        "--labels",
        "app=db",
        "--port",
        "5432",
        "--policies",
        str(policy_dir / "all.yaml"),
        "--output",
        "json",
    )
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    assert document["decisions"] == [
        {"port": 5432, "mode": "STRICT", "level": "mesh", "decided_by": "istio-system/default"},
        {"port": None, "mode": "STRICT", "level": "mesh", "decided_by": "istio-system/default"},
    ]
    assert [(c["scope"], c["policy"]) for c in document["considered"]] == [
        ("mesh", "istio-system/default"),
        ("namespace", "shop/default"),
    ]
    assert document["considered"][0]["created"] == "2024-01-01T00:00:00Z"
    assert document["considered"][1]["created"] is None


def test_no_policy_means_permissive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, "--namespace", "x", "--policies", str(tmp_path), "--output", "json")
    assert code == 0
    assert json.loads(out)["decisions"] == [
        {"port": None, "mode": "PERMISSIVE", "level": "default", "decided_by": None}
    ]
    code, out, _ = explain(capsys, "--namespace", "x", "--policies", str(tmp_path))
    assert "none: no PeerAuthentication applies" in out


def test_custom_root_namespace(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(
        capsys,
        "--namespace",
        "istio-system",
        "--root-namespace",
        "mesh-root",
        "--labels",
        "app=web",
        "--policies",
        str(policy_dir),
        "--output",
        "json",
    )
    assert code == 0
    # istio-system is an ordinary namespace now: its selector policy is workload-level.
    assert json.loads(out)["decisions"][-1]["decided_by"] == "istio-system/root-selector"


def test_environment_sets_flags(
    policy_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHCA_NAMESPACE", "shop")
    monkeypatch.setenv("MESHCA_LABELS", "app=web")
    monkeypatch.setenv("MESHCA_PORT", "8080")
    monkeypatch.setenv("MESHCA_POLICIES", str(policy_dir))
    monkeypatch.setenv("MESHCA_OUTPUT", "json")
    code, out, _ = explain(capsys)
    assert code == 0
    assert json.loads(out)["decisions"][0] == {
        "port": 8080,
        "mode": "DISABLE",
        "level": "port",
        "decided_by": "shop/web",
    }


def test_invalid_manifests_of_other_namespaces_are_reported_and_skipped(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One that could apply stops explain: tests/policy/test_source_invalid_scope.py.
    (policy_dir / "broken.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: x, namespace: cart}\nspec: {mtls: {mode: ON}}\n"
    )
    code, out, err = explain(capsys, "--namespace", "shop", "--policies", str(policy_dir))
    assert code == 0
    assert err.startswith("meshca: warning: skipped (cannot apply here): ")
    assert "broken.yaml" in err and "cart/x" in err
    assert "shop/default" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", "app"], "--labels item 'app' is not a Kubernetes label key=value"),
        (["--labels", "=web"], "--labels item '=web'"),
        (["--labels", "app=w eb"], "--labels item 'app=w eb'"),
        (["--labels", "app=a,app=b"], "gives 'app' twice"),
        (["--port", "0"], "--port '0' is not a port"),
        (["--port", "70000"], "--port '70000'"),
        (["--port", "http"], "--port 'http'"),
        (["--port", "80,-1"], "--port '-1'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    policy_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = explain(capsys, "--namespace", "shop", "--policies", str(policy_dir), *args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("meshca: error: ")
    assert message in err


def test_missing_required_settings(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = explain(capsys, "--policies", str(policy_dir))
    assert (code, err) == (2, "meshca: error: give --namespace: the namespace of the workload to explain\n")
    code, _, err = explain(capsys, "--namespace", "shop")
    assert code == 2 and "give --policies" in err
    code, _, err = explain(capsys, "--namespace", "shop", "--policies", str(policy_dir / "missing"))
    assert code == 2 and "cannot read policies from" in err
    code, _, err = explain(capsys, "--namespace", "shop", "--policies", "kube")
    assert code == 2 and "--kubeconfig" in err and "--policies DIR" in err


@pytest.fixture
def apiserver() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


def test_explain_from_the_cluster(
    apiserver: FakeKubeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    apiserver.apply_peer_authentication("istio-system", "default", {"mtls": {"mode": "STRICT"}})
    apiserver.apply_peer_authentication(
        "shop",
        "web",
        {"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}},
    )
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    code, out, err = explain(
        capsys,
        "--namespace",
        "shop",
        "--labels",
        "app=web",
        "--port",
        "8080",
        "--port",
        "8081",
        "--policies",
        "kube",
        "--kubeconfig",
        str(kubeconfig),
        "--output",
        "json",
    )
    assert code == 0, err
    assert [(d["port"], d["mode"], d["level"]) for d in json.loads(out)["decisions"]] == [
        (8080, "DISABLE", "port"),
        (8081, "STRICT", "mesh"),
        (None, "STRICT", "mesh"),
    ]


def test_cluster_unreachable_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A port held bound but not listening refuses connections, and no other test can take it.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "gone",
                            "cluster": {"server": f"http://127.0.0.1:{reserved.getsockname()[1]}"},
                        }
                    ],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                    "current-context": "gone",
                }
            )
        )
        code, _, err = explain(
            capsys, "--namespace", "shop", "--policies", "kube", "--kubeconfig", str(kubeconfig)
        )
    assert code == 1
    # The reason in words, not urllib3's reprs of its connection objects.
    assert err.startswith("meshca: error: cannot reach the Kubernetes API (Connection refused); ")
