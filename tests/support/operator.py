"""A state directory whose ledger holds what a CA would have issued, for the operator commands'
tests: two namespaces whose names share a prefix (shop, shop-canary), certificates of meshca agents
and of another client, pods on two nodes; and running `meshca` as an operator does."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ca.auth.base import Caller
from ca.cli.main import main
from ca.issuance.spiffe_id import SpiffeId
from ca.ledger.rotation_store import SqlRotationStore
from ca.ledger.store import sqlite_url
from tests.support.ledger import LedgerRig, ledger_rig

SHOP_CART = "spiffe://cluster.local/ns/shop/sa/cart"


@dataclass
class State:
    directory: Path
    rig: LedgerRig
    serials: dict[str, str]  # pod -> serial
    url: str  # the ledger's

    @property
    def flags(self) -> list[str]:
        """--state-dir, and --ledger unless the ledger is the state directory's own."""
        own = self.url == sqlite_url(self.directory / "ledger.db")
        return ["--state-dir", str(self.directory), *([] if own else ["--ledger", self.url])]

    @contextlib.contextmanager
    def store(self) -> Iterator[SqlRotationStore]:
        opened = SqlRotationStore.open(self.url)
        try:
            yield opened
        finally:
            opened.dispose()

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [e.content for e in self.rig.store.entries() if e.content["kind"] == kind]


def issue(rig: LedgerRig, namespace: str, account: str, pod: str, node: str, *, agent: bool) -> str:
    caller = Caller(
        spiffe_id=SpiffeId.for_workload("cluster.local", namespace, account),
        namespace=namespace,
        service_account=account,
        method="jwt",
        pod_name=pod,
        pod_uid=str(uuid.uuid4()),
        node_name=node,
    )
    issued = rig.issue_certificate(caller, timedelta(hours=1))
    recorded = rig.ledger.record_issued(
        issued,
        caller,
        client_address="ipv4:10.0.0.1:4000",
        cluster_id=None,
        agent="meshca" if agent else None,
    )
    assert isinstance(recorded, Future)  # the ledger's writer thread, not an event loop
    recorded.result(timeout=10)
    return format(issued.serial, "x")


@contextlib.contextmanager
def operator_state(directory: Path, url: str | None = None) -> Iterator[State]:
    """shop: cart-1 (agent, node-a), cart-2 (other client, node-b), checkout-1 (agent, node-a);
    shop-canary: cart-c (agent, node-a). Certificates live for an hour from now. The ledger is the
    state directory's own SQLite file unless `url` names another."""
    url = url or sqlite_url(directory / "ledger.db")
    with ledger_rig(url, directory) as rig:
        serials = {
            "cart-1": issue(rig, "shop", "cart", "cart-1", "node-a", agent=True),
            "cart-2": issue(rig, "shop", "cart", "cart-2", "node-b", agent=False),
            "checkout-1": issue(rig, "shop", "checkout", "checkout-1", "node-a", agent=True),
            "cart-c": issue(rig, "shop-canary", "cart", "cart-c", "node-a", agent=True),
        }
        yield State(directory=directory, rig=rig, serials=serials, url=url)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
