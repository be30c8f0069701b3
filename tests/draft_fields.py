"""The IETF draft's request fields as the tests send them, by interop version: the version
itself, the completeness field (``Upload-Incomplete`` in 3, ``Upload-Complete`` after), and an
append's fields (its offset and, from 6, ``application/partial-upload``)."""

from __future__ import annotations

PARTIAL = "application/partial-upload"


def interop(version: int) -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": str(version)}


def completeness(version: int, complete: bool) -> dict[str, str]:
    if version == 3:
        return {"Upload-Incomplete": "?0" if complete else "?1"}
    return {"Upload-Complete": "?1" if complete else "?0"}


def append_fields(version: int, offset: int, complete: bool) -> dict[str, str]:
    fields = {**interop(version), **completeness(version, complete), "Upload-Offset": str(offset)}
    if version >= 6:
        fields["Content-Type"] = PARTIAL
    return fields
