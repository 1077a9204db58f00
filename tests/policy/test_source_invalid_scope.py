"""An invalid PeerAuthentication that could apply leaves the mode unknown: explain, envoy-config and
enforce say so and exit 2, instead of resolving without it (which could report PERMISSIVE where
STRICT was meant). One in a namespace that cannot apply does not block them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ca.cli.main import main
from ca.policy.manifest import declared_namespaces
from ca.policy.model import InvalidPolicy, Workload
from tests.support.fake_apiserver import FakeKubeApiServer

REPO = Path(__file__).resolve().parents[2]
VALID = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""

# Each invalid kind: the manifest (NAMESPACE is filled in) and a fragment of the error it must give.
INVALID_FILES = {
    "misspelt mode": (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: bad, namespace: NAMESPACE}\nspec: {mtls: {mode: STRIKT}}\n",
        "spec.mtls.mode 'STRIKT' is not a mode",
    ),
    "port key not a number": (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: bad, namespace: NAMESPACE}\nspec:\n  selector: {matchLabels: {app: web}}\n"
        "  portLevelMtls: {http: {mode: STRICT}}\n",
        "has the port key 'http'",
    ),
    "unknown field": (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: bad, namespace: NAMESPACE}\nspec: {mtls: {mdoe: STRICT}}\n",
        "has unknown field(s) mdoe",
    ),
}
BROKEN_YAML = (
    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
    "metadata: {name: bad, namespace: NAMESPACE}\nspec: {mtls: {mode: STRICT}\n"
)

# The same kinds as API objects (an object always parses, so there is no broken-YAML case).
INVALID_SPECS: dict[str, tuple[dict[str, Any], str]] = {
    "misspelt mode": ({"mtls": {"mode": "STRIKT"}}, "spec.mtls.mode 'STRIKT' is not a mode"),
    "port key not a number": (
        {"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"http": {"mode": "STRICT"}}},
        "has the port key 'http'",
    ),
    "unknown field": ({"mtls": {"mdoe": "STRICT"}}, "has unknown field(s) mdoe"),
}


def write_policies(tmp_path: Path, invalid: str, namespace: str) -> tuple[Path, Path]:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "mesh.yaml").write_text(VALID)
    bad = directory / "bad.yaml"
    bad.write_text(invalid.replace("NAMESPACE", namespace))
    return directory, bad


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["policy", "explain", "--labels", "app=web", *args])
    out, err = capsys.readouterr()
    return code, out, err


def mesh_strict(table: str) -> bool:
    """The explain table decides "other ports" as STRICT from the mesh-wide policy."""
    return ["other", "STRICT", "mesh", "istio-system/default"] in [
        line.split() for line in table.splitlines()
    ]


def the_error_line(err: str) -> str:
    last = err.strip().splitlines()[-1]
    assert last.startswith("meshca: error: the mTLS mode of namespace shop is unknown"), err
    return last


# --------------------------------------------------------------------------- explain, files


@pytest.mark.parametrize("kind", sorted(INVALID_FILES))
@pytest.mark.parametrize("namespace", ["shop", "istio-system"])
def test_explain_refuses_when_an_invalid_file_could_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, namespace: str
) -> None:
    text, problem = INVALID_FILES[kind]
    policies, bad = write_policies(tmp_path, text, namespace)
    code, out, err = explain(capsys, "--namespace", "shop", "--policies", str(policies))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    line = the_error_line(err)
    assert str(bad) in line and f"PeerAuthentication {namespace}/bad" in line and problem in line


@pytest.mark.parametrize("namespace", ["shop", "elsewhere"])
def test_explain_refuses_a_file_that_does_not_parse_whatever_its_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], namespace: str
) -> None:
    policies, bad = write_policies(tmp_path, BROKEN_YAML, namespace)
    code, out, err = explain(capsys, "--namespace", "shop", "--policies", str(policies))
    assert (code, out) == (2, "")
    line = the_error_line(err)
    assert str(bad) in line and "is not valid YAML" in line


@pytest.mark.parametrize("kind", sorted(INVALID_FILES))
def test_explain_skips_an_invalid_file_of_another_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    text, problem = INVALID_FILES[kind]
    policies, bad = write_policies(tmp_path, text, "elsewhere")
    code, out, err = explain(capsys, "--namespace", "shop", "--policies", str(policies))
    assert code == 0, err
    assert err.startswith("meshca: warning: skipped") and str(bad) in err and problem in err
    assert mesh_strict(out)


def test_a_valid_policy_shares_the_fate_of_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The whole file is refused, so the valid shop policy in it is not in effect either.
    text = INVALID_FILES["misspelt mode"][0].replace("NAMESPACE", "elsewhere")
    same_file = VALID.replace("istio-system", "shop") + "---\n" + text
    policies, _ = write_policies(tmp_path, same_file, "unused")
    code, out, err = explain(capsys, "--namespace", "shop", "--policies", str(policies))
    assert (code, out) == (2, "")
    assert "PeerAuthentication elsewhere/bad" in the_error_line(err)


# --------------------------------------------------------------------------- which namespaces a file names


@pytest.mark.parametrize(
    ("text", "namespaces"),
    [
        (VALID + "---\n" + VALID.replace("istio-system", "shop"), {"istio-system", "shop"}),
        ("kind: ConfigMap\nmetadata: {name: c}\n---\n" + VALID, {"istio-system"}),
        (
            "apiVersion: v1\nkind: List\nitems:\n- {kind: PeerAuthentication, metadata: {namespace: a}}\n"
            "- {kind: Service, metadata: {name: s}}\n",
            {"a"},
        ),
        ("kind: PeerAuthenticationList\nitems:\n- {metadata: {name: x, namespace: b}}\n", {"b"}),
        ("", set()),
    ],
)
def test_declared_namespaces_are_read_without_validating(text: str, namespaces: set[str]) -> None:
    assert declared_namespaces(text) == frozenset(namespaces)


@pytest.mark.parametrize(
    "text",
    [
        BROKEN_YAML,
        "kind: PeerAuthentication\nmetadata: {name: x}\n",  # no namespace
        "kind: PeerAuthentication\nmetadata: {name: x, namespace: [a]}\n",
        "just text\n",
        "kind: PeerAuthenticationList\nitems: {a: b}\n",
        "kind: List\nitems:\n- 3\n",
    ],
)
def test_namespaces_that_cannot_be_read_are_unknown(text: str) -> None:
    assert declared_namespaces(text) is None


def test_json_manifests_name_their_namespaces() -> None:
    text = '[{"kind": "PeerAuthentication", "metadata": {"namespace": "a"}}]'
    assert declared_namespaces(text, json_text=True) == frozenset({"a"})
    assert declared_namespaces('{"kind": ', json_text=True) is None


def test_could_apply_is_the_workloads_namespace_the_root_or_unknown() -> None:
    shop = Workload("shop", {})
    assert InvalidPolicy("e", frozenset({"shop"})).could_apply_to(shop, "istio-system")
    assert InvalidPolicy("e", frozenset({"mesh-root"})).could_apply_to(shop, "mesh-root")
    assert InvalidPolicy("e", None).could_apply_to(shop, "istio-system")
    assert not InvalidPolicy("e", frozenset({"other", "istio-system"})).could_apply_to(shop, "mesh-root")
    assert not InvalidPolicy("e", frozenset()).could_apply_to(shop, "istio-system")


# --------------------------------------------------------------------------- the cluster as the source


@pytest.fixture
def apiserver() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        server.apply_peer_authentication("istio-system", "default", {"mtls": {"mode": "STRICT"}})
        yield server


@pytest.fixture
def kubeconfig(apiserver: FakeKubeApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


def kube_flags(kubeconfig: Path) -> list[str]:
    return ["--policies", "kube", "--kubeconfig", str(kubeconfig)]


@pytest.mark.parametrize("kind", sorted(INVALID_SPECS))
def test_explain_from_the_cluster_refuses_an_invalid_object_that_could_apply(
    apiserver: FakeKubeApiServer, kubeconfig: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    spec, problem = INVALID_SPECS[kind]
    apiserver.apply_peer_authentication("shop", "bad", spec)
    code, out, err = explain(capsys, "--namespace", "shop", *kube_flags(kubeconfig))
    assert (code, out) == (2, "")
    line = the_error_line(err)
    assert "PeerAuthentication shop/bad" in line and problem in line
    code, out, err = explain(capsys, "--namespace", "cart", *kube_flags(kubeconfig))
    assert code == 0, err
    assert "shop/bad" in err and mesh_strict(out)


def envoy_config(kubeconfig: Path, namespace: str) -> list[str]:
    return [
        "policy",
        "envoy-config",
        "--namespace",
        namespace,
        "--labels",
        "app=web",
        "--inbound",
        "15006:8080/http",
        "--log-level",
        "error",
        *kube_flags(kubeconfig),
    ]


@pytest.mark.parametrize("kind", sorted(INVALID_SPECS))
def test_envoy_config_from_the_cluster_refuses_an_invalid_object_that_could_apply(
    apiserver: FakeKubeApiServer, kubeconfig: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    spec, problem = INVALID_SPECS[kind]
    apiserver.apply_peer_authentication("shop", "bad", spec)
    assert main(envoy_config(kubeconfig, "shop")) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = the_error_line(err)
    assert "PeerAuthentication shop/bad" in line and problem in line
    assert main(envoy_config(kubeconfig, "cart")) == 0
    (listener,) = yaml.safe_load(capsys.readouterr().out)["static_resources"]["listeners"]
    assert listener["metadata"]["filter_metadata"]["meshca"]["mode"] == "STRICT"


def test_enforce_from_the_cluster_refuses_to_start_when_an_invalid_object_could_apply(
    apiserver: FakeKubeApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    apiserver.apply_peer_authentication("shop", "bad", INVALID_SPECS["misspelt mode"][0])
    args = ["--namespace", "shop", "--inbound", "15006:8080", "--cert-dir", str(tmp_path / "certs")]
    args += ["--metrics-listen", "off", "--log-level", "error", *kube_flags(kubeconfig)]
    # A process, not main(): an enforcer that did start would run until signalled.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    result = subprocess.run(
        [sys.executable, "-m", "ca.cli", "enforce", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    line = the_error_line(result.stderr)
    assert "PeerAuthentication shop/bad" in line and "'STRIKT' is not a mode" in line
