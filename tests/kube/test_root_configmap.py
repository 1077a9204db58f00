"""Which namespaces carry the trust bundle ConfigMap, what it holds, and when one needs repair."""

from __future__ import annotations

from typing import Any

import pytest

from ca.kube.root_configmap import (
    CONFIGMAP_NAME,
    ROOT_CERT_KEY,
    Repair,
    desired_configmap,
    namespace_wants_configmap,
    repair_needed,
    repaired,
)
from tests.support.pki import make_hierarchy, pem

BUNDLE = pem(make_hierarchy().root).decode()
OTHER_BUNDLE = pem(make_hierarchy().root).decode()


def namespace(name: str, phase: str | None = "Active", deleting: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name}, "status": {"phase": phase} if phase else {}}
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-12-01T12:00:00Z"
    return obj


def configmap(data: dict[str, str] | None, **metadata: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": CONFIGMAP_NAME, "namespace": "shop", **metadata}}
    if data is not None:
        obj["data"] = data
    return obj


@pytest.mark.parametrize("name", ["default", "shop", "istio-system", "kube-system"])
def test_active_namespaces_get_one_kube_system_included(name: str) -> None:
    assert namespace_wants_configmap(namespace(name))


@pytest.mark.parametrize("name", ["kube-public", "kube-node-lease", "local-path-storage"])
def test_the_cluster_system_namespaces_are_skipped(name: str) -> None:
    assert not namespace_wants_configmap(namespace(name))


def test_a_namespace_being_deleted_gets_none() -> None:
    assert not namespace_wants_configmap(namespace("shop", phase="Terminating"))
    assert not namespace_wants_configmap(namespace("shop", deleting=True))
    # The phase is not always filled in (a namespace just created): that is no reason to skip it.
    assert namespace_wants_configmap(namespace("shop", phase=None))


def test_a_namespace_without_a_name_gets_none() -> None:
    assert not namespace_wants_configmap({"metadata": {}})
    assert not namespace_wants_configmap({})


def test_the_configmap_to_create() -> None:
    assert desired_configmap("shop", BUNDLE) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "istio-ca-root-cert",
            "namespace": "shop",
            "labels": {"istio.io/config": "true"},
        },
        "data": {"root-cert.pem": BUNDLE},
    }


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (None, Repair.CREATE),
        (configmap({ROOT_CERT_KEY: BUNDLE}), Repair.NONE),
        (configmap({ROOT_CERT_KEY: BUNDLE, "extra.pem": "kept"}), Repair.NONE),
        (configmap({ROOT_CERT_KEY: OTHER_BUNDLE}), Repair.UPDATE),
        (configmap({ROOT_CERT_KEY: BUNDLE + "\n"}), Repair.UPDATE),
        (configmap({"other": BUNDLE}), Repair.UPDATE),
        (configmap({}), Repair.UPDATE),
        (configmap(None), Repair.UPDATE),
    ],
    ids=[
        "missing",
        "correct",
        "correct-with-more",
        "other-bundle",
        "changed",
        "wrong-key",
        "empty",
        "no-data",
    ],
)
def test_repair_needed(observed: dict[str, Any] | None, expected: Repair) -> None:
    assert repair_needed(observed, BUNDLE) is expected


def test_a_repair_restores_the_bundle_and_keeps_the_rest() -> None:
    observed = configmap(
        {ROOT_CERT_KEY: "edited by hand", "extra.pem": "kept"},
        resourceVersion="41",
        labels={"team": "shop"},
        annotations={"note": "kept"},
    )
    result = repaired(observed, BUNDLE)
    assert result["data"] == {ROOT_CERT_KEY: BUNDLE, "extra.pem": "kept"}
    assert result["metadata"] == observed["metadata"]  # resourceVersion too: a newer edit is not lost
    assert (result["apiVersion"], result["kind"]) == ("v1", "ConfigMap")
    assert observed["data"][ROOT_CERT_KEY] == "edited by hand"  # the observed object is left alone
    assert repair_needed(result, BUNDLE) is Repair.NONE


def test_a_repair_of_a_configmap_without_data() -> None:
    assert repaired(configmap(None), BUNDLE)["data"] == {ROOT_CERT_KEY: BUNDLE}
