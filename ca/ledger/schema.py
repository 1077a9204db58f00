"""Ledger tables and the migrations that bring an existing ledger up to date.

Each migration runs once, in order, in its own transaction; the version is kept
in `ledger_meta`. Never edit a released migration: add the next one.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)

metadata = MetaData()

entries = Table(
    "ledger_entries",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("time", String(32), nullable=False),
    Column("serial", String(40)),
    Column("spiffe_id", String(2048)),
    Column("namespace", String(253)),
    Column("service_account", String(253)),
    Column("pod_name", String(253)),
    Column("not_after", String(32)),
    Column("reason", String(64)),
    Column("content", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
)

checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("head_seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("body", Text, nullable=False),
)

head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("anchor_seq", BigInteger, nullable=False),
    Column("anchor_hash", String(64), nullable=False),
)

meta = Table(
    "ledger_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


# Forced rotation (ca.ledger.rotation_store). Times are ledger timestamps (entries.timestamp),
# which sort as text; durations are whole microseconds.
ORDER_ID_LENGTH = 16
SERIAL_LENGTH = 40

rotation_orders = Table(
    "rotation_orders",
    metadata,
    Column("id", String(ORDER_ID_LENGTH), primary_key=True),
    Column("time", String(32), nullable=False),
    Column("ordered_by", String(2048), nullable=False),
    Column("selector", Text, nullable=False),  # rotation.selector_to_json
    Column("reason", Text, nullable=False),
    Column("grace_us", BigInteger, nullable=False),
    Column("spread_us", BigInteger, nullable=False),
    Column("grace_ends", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("completed_at", String(32)),
    Column("matched", Integer, nullable=False),
    Column("ledger_seq", BigInteger, nullable=False),  # its "rotation_order" record
)
Index("ix_rotation_orders_state_ends", rotation_orders.c.state, rotation_orders.c.grace_ends)
Index("ix_rotation_orders_time", rotation_orders.c.time)

rotation_targets = Table(
    "rotation_targets",
    metadata,
    Column("order_id", String(ORDER_ID_LENGTH), primary_key=True),
    Column("serial", String(SERIAL_LENGTH), primary_key=True),
    Column("target_index", Integer, nullable=False),
    Column("spiffe_id", String(2048), nullable=False),
    Column("namespace", String(253)),
    Column("service_account", String(253)),
    Column("pod_name", String(253)),
    Column("node_name", String(253)),
    Column("issued", String(32), nullable=False),
    Column("not_after", String(32), nullable=False),
    Column("from_meshca_agent", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("replaced_by", String(SERIAL_LENGTH)),
    Column("replaced_at", String(32)),
    Column("revoked_at", String(32)),
)
Index("ix_rotation_targets_serial", rotation_targets.c.serial)

revocations = Table(
    "revocations",
    metadata,
    Column("serial", String(SERIAL_LENGTH), primary_key=True),
    Column("spiffe_id", String(2048)),
    Column("revoked_at", String(32), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("not_after", String(32), nullable=False),
    Column("order_id", String(ORDER_ID_LENGTH)),
    Column("note", Text),
    Column("ledger_seq", BigInteger, nullable=False),  # its "revoked" record
)
Index("ix_revocations_not_after", revocations.c.not_after)

# One row (id 1) whose marker grows with every change to the three tables above, in the
# change's own transaction: what replicas watch (ca.ledger.changes).
rotation_changes = Table(
    "rotation_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("marker", BigInteger, nullable=False),
)


# What each CA replica's connected agents hold: per replica and root, how many of its agents
# report that root and how many are connected, rewritten every second. The leader sums the
# rows of replicas that reported lately to decide whether a new root may sign.
bundle_holders = Table(
    "bundle_holders",
    metadata,
    Column("replica", String(253), primary_key=True),
    Column("root_sha256", String(64), primary_key=True),
    Column("holding", Integer, nullable=False),
    Column("connected", Integer, nullable=False),
    Column("updated", String(32), nullable=False),
)


# Which agents have a control stream open to some CA replica (ca.ledger.connected_agents): each
# replica's heartbeat, and the serials of the certificates its streams were opened with, changed
# row by row as streams open and close. A dry run counts the serials of replicas whose heartbeat
# is fresh.
connected_replicas = Table(
    "connected_replicas",
    metadata,
    Column("replica", String(253), primary_key=True),
    Column("updated", String(32), nullable=False),
)

connected_serials = Table(
    "connected_serials",
    metadata,
    Column("replica", String(253), primary_key=True),
    Column("serial", String(SERIAL_LENGTH), primary_key=True),
)


def _v1(conn: Connection) -> None:
    """Entries, checkpoints and the head row, as first released."""
    v1 = MetaData()
    entries_v1 = Table(
        "ledger_entries",
        v1,
        *(
            Column(c.name, c.type, primary_key=c.primary_key, autoincrement=False, nullable=c.nullable)
            for c in entries.columns
            if c.name != "reason"
        ),
    )
    Index("ix_ledger_time", entries_v1.c.time)
    Index("ix_ledger_spiffe_id", entries_v1.c.spiffe_id)
    v1.create_all(conn)
    checkpoints.create(conn)
    head.create(conn)
    conn.execute(head.insert().values(id=1, seq=0, hash="0" * 64, anchor_seq=0, anchor_hash="0" * 64))


def _v2(conn: Connection) -> None:
    """A `reason` column for refusal reports, filled from each entry's content; audit indexes."""
    conn.execute(text("ALTER TABLE ledger_entries ADD COLUMN reason VARCHAR(64)"))
    rows = conn.execute(select(entries.c.seq, entries.c.content)).all()
    for seq, content in rows:
        reason = json.loads(content).get("reason")
        if reason is not None:
            conn.execute(entries.update().where(entries.c.seq == seq).values(reason=reason))
    Index("ix_ledger_ns_sa", entries.c.namespace, entries.c.service_account).create(conn, checkfirst=True)
    Index("ix_ledger_not_after", entries.c.not_after).create(conn, checkfirst=True)
    Index("ix_ledger_pod", entries.c.pod_name).create(conn, checkfirst=True)
    Index("ix_ledger_kind_time", entries.c.kind, entries.c.time).create(conn, checkfirst=True)


def _v3(conn: Connection) -> None:
    """An index on `serial`, so that `audit show SERIAL` does not scan the ledger."""
    Index("ix_ledger_serial", entries.c.serial).create(conn, checkfirst=True)


def _v4(conn: Connection) -> None:
    """Forced rotation: orders, their targets, revocations, and the change marker replicas watch."""
    for table in (rotation_orders, rotation_targets, revocations, rotation_changes):
        table.create(conn)  # with its indexes
    conn.execute(rotation_changes.insert().values(id=1, marker=0))


def _v5(conn: Connection) -> None:
    """CA key rotation: what each replica's agents report holding of the trust bundle."""
    bundle_holders.create(conn)


def _v6(conn: Connection) -> None:
    """Forced rotation over several replicas: the agents connected to each, for a dry run."""
    connected_replicas.create(conn)
    connected_serials.create(conn)


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_v1, _v2, _v3, _v4, _v5, _v6)
CURRENT_VERSION = len(MIGRATIONS)


def version(conn: Connection) -> int:
    if not inspect(conn).has_table("ledger_meta"):
        return 0
    value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def set_version(conn: Connection, number: int) -> None:
    meta.create(conn, checkfirst=True)
    updated = conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(number)))
    if updated.rowcount == 0:
        conn.execute(meta.insert().values(key="schema_version", value=str(number)))
