from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentMessage(_message.Message):
    __slots__ = ("hello", "replaced", "bundle_held", "rebind")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_HELD_FIELD_NUMBER: _ClassVar[int]
    REBIND_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    replaced: Replaced
    bundle_held: BundleHeld
    rebind: Rebind
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., replaced: _Optional[_Union[Replaced, _Mapping]] = ..., bundle_held: _Optional[_Union[BundleHeld, _Mapping]] = ..., rebind: _Optional[_Union[Rebind, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_version", "bundle_sha256", "pod_name", "node_name")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    bundle_sha256: _containers.RepeatedScalarFieldContainer[str]
    pod_name: str
    node_name: str
    def __init__(self, agent_version: _Optional[str] = ..., bundle_sha256: _Optional[_Iterable[str]] = ..., pod_name: _Optional[str] = ..., node_name: _Optional[str] = ...) -> None: ...

class Replaced(_message.Message):
    __slots__ = ("order_id", "old_serial", "new_serial")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    NEW_SERIAL_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    old_serial: str
    new_serial: str
    def __init__(self, order_id: _Optional[str] = ..., old_serial: _Optional[str] = ..., new_serial: _Optional[str] = ...) -> None: ...

class Rebind(_message.Message):
    __slots__ = ("certificate_der", "proof")
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    certificate_der: bytes
    proof: bytes
    def __init__(self, certificate_der: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class BundleHeld(_message.Message):
    __slots__ = ("bundle_sha256", "sequence")
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    bundle_sha256: _containers.RepeatedScalarFieldContainer[str]
    sequence: int
    def __init__(self, bundle_sha256: _Optional[_Iterable[str]] = ..., sequence: _Optional[int] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("rotate", "revocations", "reissue", "bundle")
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    REISSUE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    rotate: RotateOrder
    revocations: RevocationList
    reissue: Reissue
    bundle: TrustBundle
    def __init__(self, rotate: _Optional[_Union[RotateOrder, _Mapping]] = ..., revocations: _Optional[_Union[RevocationList, _Mapping]] = ..., reissue: _Optional[_Union[Reissue, _Mapping]] = ..., bundle: _Optional[_Union[TrustBundle, _Mapping]] = ...) -> None: ...

class RotateOrder(_message.Message):
    __slots__ = ("order_id", "serial", "delay_ms", "reason")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    serial: str
    delay_ms: int
    reason: str
    def __init__(self, order_id: _Optional[str] = ..., serial: _Optional[str] = ..., delay_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RevocationList(_message.Message):
    __slots__ = ("crl_der", "number", "signer_der")
    CRL_DER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    SIGNER_DER_FIELD_NUMBER: _ClassVar[int]
    crl_der: _containers.RepeatedScalarFieldContainer[bytes]
    number: int
    signer_der: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, crl_der: _Optional[_Iterable[bytes]] = ..., number: _Optional[int] = ..., signer_der: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Reissue(_message.Message):
    __slots__ = ("serial", "reason")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    serial: str
    reason: str
    def __init__(self, serial: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TrustBundle(_message.Message):
    __slots__ = ("root_der", "sequence")
    ROOT_DER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    root_der: _containers.RepeatedScalarFieldContainer[bytes]
    sequence: int
    def __init__(self, root_der: _Optional[_Iterable[bytes]] = ..., sequence: _Optional[int] = ...) -> None: ...
