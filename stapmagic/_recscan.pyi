from collections.abc import Sequence
from typing import Any

def scan(
    buf: bytes,
    kinds: bytes,
    probe_ok: bytes,
    nrows: int,
    idx: Any,
    time: Any,
    pid: Any,
    tid: Any,
    cpu: Any,
    comm: Any,
    fields: Sequence[Any],
    nulls: Sequence[Any] | None = None,
) -> list[list[bytes]] | None: ...

RECORD_PREFIX: str
END_TAG: str
FIELD_SEP: str
NA_FIELD: str
KIND_CODES: str
