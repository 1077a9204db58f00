from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
