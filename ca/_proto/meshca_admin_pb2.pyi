from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CaStatusResponse(_message.Message):
    __slots__ = ("status_json",)
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    status_json: str
    def __init__(self, status_json: _Optional[str] = ...) -> None: ...

class TransitionRequest(_message.Message):
    __slots__ = ("action", "force", "dry_run", "new_root", "slot")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    NEW_ROOT_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    action: str
    force: bool
    dry_run: bool
    new_root: bool
    slot: str
    def __init__(self, action: _Optional[str] = ..., force: _Optional[bool] = ..., dry_run: _Optional[bool] = ..., new_root: _Optional[bool] = ..., slot: _Optional[str] = ...) -> None: ...

class TransitionResponse(_message.Message):
    __slots__ = ("ok", "done", "lines", "reason", "slot")
    OK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    done: bool
    lines: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    slot: str
    def __init__(self, ok: _Optional[bool] = ..., done: _Optional[bool] = ..., lines: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., slot: _Optional[str] = ...) -> None: ...

class Selector(_message.Message):
    __slots__ = ("spiffe_id", "namespace", "service_account", "pod", "node", "serials", "issued_before", "all")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    namespace: str
    service_account: str
    pod: str
    node: str
    serials: _containers.RepeatedScalarFieldContainer[str]
    issued_before: str
    all: bool
    def __init__(self, spiffe_id: _Optional[str] = ..., namespace: _Optional[str] = ..., service_account: _Optional[str] = ..., pod: _Optional[str] = ..., node: _Optional[str] = ..., serials: _Optional[_Iterable[str]] = ..., issued_before: _Optional[str] = ..., all: _Optional[bool] = ...) -> None: ...

class RotateRequest(_message.Message):
    __slots__ = ("selector", "reason", "grace", "spread", "dry_run", "restart_workloads")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    RESTART_WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    selector: Selector
    reason: str
    grace: str
    spread: str
    dry_run: bool
    restart_workloads: bool
    def __init__(self, selector: _Optional[_Union[Selector, _Mapping]] = ..., reason: _Optional[str] = ..., grace: _Optional[str] = ..., spread: _Optional[str] = ..., dry_run: _Optional[bool] = ..., restart_workloads: _Optional[bool] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("serial", "spiffe_id", "namespace", "service_account", "pod", "node", "issued", "not_after", "holder", "state", "replaced_by")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLACED_BY_FIELD_NUMBER: _ClassVar[int]
    serial: str
    spiffe_id: str
    namespace: str
    service_account: str
    pod: str
    node: str
    issued: str
    not_after: str
    holder: str
    state: str
    replaced_by: str
    def __init__(self, serial: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., namespace: _Optional[str] = ..., service_account: _Optional[str] = ..., pod: _Optional[str] = ..., node: _Optional[str] = ..., issued: _Optional[str] = ..., not_after: _Optional[str] = ..., holder: _Optional[str] = ..., state: _Optional[str] = ..., replaced_by: _Optional[str] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("namespace", "kind", "name", "pods", "restarted", "problem")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    RESTARTED_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    kind: str
    name: str
    pods: _containers.RepeatedScalarFieldContainer[str]
    restarted: bool
    problem: str
    def __init__(self, namespace: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., pods: _Optional[_Iterable[str]] = ..., restarted: _Optional[bool] = ..., problem: _Optional[str] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("id", "ordered_by", "time", "selector", "reason", "grace_seconds", "spread_seconds", "grace_ends", "state", "matched", "replaced", "outstanding", "revoked", "expired")
    ID_FIELD_NUMBER: _ClassVar[int]
    ORDERED_BY_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPREAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GRACE_ENDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    id: str
    ordered_by: str
    time: str
    selector: Selector
    reason: str
    grace_seconds: int
    spread_seconds: int
    grace_ends: str
    state: str
    matched: int
    replaced: int
    outstanding: int
    revoked: int
    expired: int
    def __init__(self, id: _Optional[str] = ..., ordered_by: _Optional[str] = ..., time: _Optional[str] = ..., selector: _Optional[_Union[Selector, _Mapping]] = ..., reason: _Optional[str] = ..., grace_seconds: _Optional[int] = ..., spread_seconds: _Optional[int] = ..., grace_ends: _Optional[str] = ..., state: _Optional[str] = ..., matched: _Optional[int] = ..., replaced: _Optional[int] = ..., outstanding: _Optional[int] = ..., revoked: _Optional[int] = ..., expired: _Optional[int] = ...) -> None: ...

class RotateResponse(_message.Message):
    __slots__ = ("order", "targets", "matched", "connected", "not_connected", "not_pushable", "workloads", "warnings")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    NOT_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    NOT_PUSHABLE_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    order: Order
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    matched: int
    connected: int
    not_connected: int
    not_pushable: int
    workloads: _containers.RepeatedCompositeFieldContainer[Workload]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., matched: _Optional[int] = ..., connected: _Optional[int] = ..., not_connected: _Optional[int] = ..., not_pushable: _Optional[int] = ..., workloads: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class OrderStatusRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class OrderStatusResponse(_message.Message):
    __slots__ = ("order", "targets")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    order: Order
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("orders",)
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    def __init__(self, orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("serials", "reason", "note")
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    serials: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    note: str
    def __init__(self, serials: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("serial", "spiffe_id", "revoked_at", "reason", "order_id", "not_after")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    serial: str
    spiffe_id: str
    revoked_at: str
    reason: str
    order_id: str
    not_after: str
    def __init__(self, serial: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., revoked_at: _Optional[str] = ..., reason: _Optional[str] = ..., order_id: _Optional[str] = ..., not_after: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, revoked: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class EntryFilter(_message.Message):
    __slots__ = ("spiffe_id", "namespace", "service_account", "pod", "since", "until", "status", "valid_at")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VALID_AT_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    namespace: str
    service_account: str
    pod: str
    since: str
    until: str
    status: str
    valid_at: str
    def __init__(self, spiffe_id: _Optional[str] = ..., namespace: _Optional[str] = ..., service_account: _Optional[str] = ..., pod: _Optional[str] = ..., since: _Optional[str] = ..., until: _Optional[str] = ..., status: _Optional[str] = ..., valid_at: _Optional[str] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("filter", "limit")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    filter: EntryFilter
    limit: int
    def __init__(self, filter: _Optional[_Union[EntryFilter, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("seq", "kind", "time", "serial", "spiffe_id", "namespace", "service_account", "pod_name", "not_after", "reason", "content_json")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_JSON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    time: str
    serial: str
    spiffe_id: str
    namespace: str
    service_account: str
    pod_name: str
    not_after: str
    reason: str
    content_json: str
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., time: _Optional[str] = ..., serial: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., namespace: _Optional[str] = ..., service_account: _Optional[str] = ..., pod_name: _Optional[str] = ..., not_after: _Optional[str] = ..., reason: _Optional[str] = ..., content_json: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "truncated")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    truncated: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ShowSerialRequest(_message.Message):
    __slots__ = ("serial",)
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    serial: str
    def __init__(self, serial: _Optional[str] = ...) -> None: ...

class ShowSerialResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("filter", "at", "max_ttl")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MAX_TTL_FIELD_NUMBER: _ClassVar[int]
    filter: EntryFilter
    at: str
    max_ttl: str
    def __init__(self, filter: _Optional[_Union[EntryFilter, _Mapping]] = ..., at: _Optional[str] = ..., max_ttl: _Optional[str] = ...) -> None: ...

class TtlBucket(_message.Message):
    __slots__ = ("label", "count")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    label: str
    count: int
    def __init__(self, label: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class IdentityStats(_message.Message):
    __slots__ = ("namespace", "spiffe_id", "issued", "valid_now", "ttl", "refused")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_FIELD_NUMBER: _ClassVar[int]
    VALID_NOW_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    spiffe_id: str
    issued: int
    valid_now: int
    ttl: _containers.RepeatedCompositeFieldContainer[TtlBucket]
    refused: int
    def __init__(self, namespace: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., issued: _Optional[int] = ..., valid_now: _Optional[int] = ..., ttl: _Optional[_Iterable[_Union[TtlBucket, _Mapping]]] = ..., refused: _Optional[int] = ...) -> None: ...

class RefusalCount(_message.Message):
    __slots__ = ("namespace", "spiffe_id", "reason", "count")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    spiffe_id: str
    reason: str
    count: int
    def __init__(self, namespace: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., reason: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Violation(_message.Message):
    __slots__ = ("seq", "serial", "spiffe_id", "namespace", "key_type", "lifetime_seconds", "not_after", "problems")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    serial: str
    spiffe_id: str
    namespace: str
    key_type: str
    lifetime_seconds: int
    not_after: str
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., serial: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., namespace: _Optional[str] = ..., key_type: _Optional[str] = ..., lifetime_seconds: _Optional[int] = ..., not_after: _Optional[str] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("at", "max_ttl_seconds", "identities", "refusals", "violations", "violations_total")
    AT_FIELD_NUMBER: _ClassVar[int]
    MAX_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    at: str
    max_ttl_seconds: int
    identities: _containers.RepeatedCompositeFieldContainer[IdentityStats]
    refusals: _containers.RepeatedCompositeFieldContainer[RefusalCount]
    violations: _containers.RepeatedCompositeFieldContainer[Violation]
    violations_total: int
    def __init__(self, at: _Optional[str] = ..., max_ttl_seconds: _Optional[int] = ..., identities: _Optional[_Iterable[_Union[IdentityStats, _Mapping]]] = ..., refusals: _Optional[_Iterable[_Union[RefusalCount, _Mapping]]] = ..., violations: _Optional[_Iterable[_Union[Violation, _Mapping]]] = ..., violations_total: _Optional[int] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("ok", "entries_checked", "checkpoints_checked", "bad_seq", "problem", "summary")
    OK_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    entries_checked: int
    checkpoints_checked: int
    bad_seq: int
    problem: str
    summary: str
    def __init__(self, ok: _Optional[bool] = ..., entries_checked: _Optional[int] = ..., checkpoints_checked: _Optional[int] = ..., bad_seq: _Optional[int] = ..., problem: _Optional[str] = ..., summary: _Optional[str] = ...) -> None: ...
