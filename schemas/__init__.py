"""tokenrelay's wire contract: generation config, stream records, keys and errors.

Pure Python (msgpack only): importing it never pulls in torch, Celery or redis-py.
"""

from schemas import keys
from schemas.config import GenerationConfig
from schemas.errors import (
    GenerationFailed,
    RelayConnectionError,
    RequestNotFound,
    SchemaError,
    StreamError,
    StreamTimeout,
    TokenRelayError,
    ValidationError,
)
from schemas.job import Job
from schemas.records import SCHEMA_VERSION, ErrorInfo, Record, TokenLogprob, TopLogprob, Usage, decode, encode

__all__ = [
    "SCHEMA_VERSION",
    "ErrorInfo",
    "GenerationConfig",
    "GenerationFailed",
    "Job",
    "Record",
    "RelayConnectionError",
    "RequestNotFound",
    "SchemaError",
    "StreamError",
    "StreamTimeout",
    "TokenLogprob",
    "TokenRelayError",
    "TopLogprob",
    "Usage",
    "ValidationError",
    "decode",
    "encode",
    "keys",
]
