from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetLatestCheckpointRequest(_message.Message):
    __slots__ = ("log_id",)
    LOG_ID_FIELD_NUMBER: _ClassVar[int]
    log_id: str
    def __init__(self, log_id: _Optional[str] = ...) -> None: ...

class SignedCheckpoint(_message.Message):
    __slots__ = ("log_id", "tree_size", "note")
    LOG_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    log_id: str
    tree_size: int
    note: bytes
    def __init__(self, log_id: _Optional[str] = ..., tree_size: _Optional[int] = ..., note: _Optional[bytes] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("log_id", "seq", "request_id", "tree_size")
    LOG_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    log_id: str
    seq: int
    request_id: str
    tree_size: int
    def __init__(self, log_id: _Optional[str] = ..., seq: _Optional[int] = ..., request_id: _Optional[str] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProof(_message.Message):
    __slots__ = ("log_id", "index", "entry", "hashes", "checkpoint", "tlog_proof")
    LOG_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TLOG_PROOF_FIELD_NUMBER: _ClassVar[int]
    log_id: str
    index: int
    entry: bytes
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    checkpoint: SignedCheckpoint
    tlog_proof: str
    def __init__(self, log_id: _Optional[str] = ..., index: _Optional[int] = ..., entry: _Optional[bytes] = ..., hashes: _Optional[_Iterable[bytes]] = ..., checkpoint: _Optional[_Union[SignedCheckpoint, _Mapping]] = ..., tlog_proof: _Optional[str] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("log_id", "first", "second")
    LOG_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    log_id: str
    first: int
    second: int
    def __init__(self, log_id: _Optional[str] = ..., first: _Optional[int] = ..., second: _Optional[int] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("log_id", "first", "second", "hashes", "first_checkpoint", "second_checkpoint")
    LOG_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    FIRST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    SECOND_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    log_id: str
    first: int
    second: int
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    first_checkpoint: SignedCheckpoint
    second_checkpoint: SignedCheckpoint
    def __init__(self, log_id: _Optional[str] = ..., first: _Optional[int] = ..., second: _Optional[int] = ..., hashes: _Optional[_Iterable[bytes]] = ..., first_checkpoint: _Optional[_Union[SignedCheckpoint, _Mapping]] = ..., second_checkpoint: _Optional[_Union[SignedCheckpoint, _Mapping]] = ...) -> None: ...
