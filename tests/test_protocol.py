"""tus wire facts: the metadata codec, header parsing, the date format and Range parsing."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upload_service.errors import BadRequest, PreconditionFailed, UnsupportedMediaType
from upload_service.tus.protocol import (
    OFFSET_CONTENT_TYPE,
    TUS_VERSION,
    ByteRange,
    check_offset_content_type,
    check_version,
    decode_metadata,
    encode_metadata,
    http_date,
    metadata_text,
    parse_range,
    parse_uint,
)
from upload_service.uploads import Metadata

TOKEN_ALPHABET = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

keys = st.text(alphabet=TOKEN_ALPHABET, min_size=1, max_size=20)
# tus: "the value MAY be empty; then the separating space MAY be left out". An empty value and an
# absent one are the same thing on the wire, and the codec decodes both as None.
values = st.one_of(st.none(), st.binary(min_size=1, max_size=64))


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


# -- metadata -------------------------------------------------------------------------------------


@given(st.dictionaries(keys, values, max_size=8))
def test_metadata_round_trips(metadata: Metadata) -> None:
    assert decode_metadata(encode_metadata(metadata)) == metadata


@given(st.dictionaries(keys, values, min_size=1, max_size=8))
def test_encoded_metadata_is_canonical(metadata: Metadata) -> None:
    header = encode_metadata(metadata)
    assert encode_metadata(decode_metadata(header)) == header
    assert " ," not in header
    assert not header.endswith(" ")


@given(st.dictionaries(keys, st.binary(max_size=8), min_size=1, max_size=4))
def test_an_empty_value_means_the_same_as_no_value(metadata: Metadata) -> None:
    decoded = decode_metadata(encode_metadata(metadata))
    assert decoded == {key: value or None for key, value in metadata.items()}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", {}),
        ("   ", {}),
        ("filename d29ybGQ=", {"filename": b"world"}),
        ("is_confidential", {"is_confidential": None}),
        ("empty ", {"empty": None}),
        (f"a {b64(b'1')}, b {b64(b'22')},c", {"a": b"1", "b": b"22", "c": None}),
        (f"  name {b64(bytes(range(256)))}  ", {"name": bytes(range(256))}),
        ("K-e.y_! YQ==", {"K-e.y_!": b"a"}),
    ],
)
def test_decode_metadata(header: str, expected: Metadata) -> None:
    assert decode_metadata(header) == expected


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("my key dmFs", r"pair 'my key dmFs' is not 'key base64value'"),
        ("key  dmFs", r"is not 'key base64value'"),  # two spaces
        ("a YQ==,,b Yg==", r"pair '' is not"),  # empty pair
        ("a YQ==,", r"pair '' is not"),  # trailing comma
        (",a YQ==", r"pair '' is not"),
        ("ключ dmFs", r"key 'ключ' is not a valid token"),
        ("k(ey) dmFs", r"key 'k\(ey\)' is not a valid token"),
        ("a:b dmFs", r"is not a valid token"),
        ("key\tdmFs", r"is not a valid token"),
        ("a YQ==,a Yg==", r"key 'a' appears twice"),
        ("a,a", r"key 'a' appears twice"),
        ("a YQ=", r"value of 'a' is not valid base64"),  # bad padding
        ("a Y", r"value of 'a' is not valid base64"),
        ("a Y*Q=", r"value of 'a' is not valid base64"),
        ("a YQ==YQ==", r"value of 'a' is not valid base64"),
        ("a ====", r"value of 'a' is not valid base64"),
        ("a YQ-_", r"value of 'a' is not valid base64"),  # urlsafe alphabet is not base64
        ("a d29y bGQ=", r"is not 'key base64value'"),
    ],
)
def test_malformed_metadata_is_a_bad_request_with_a_clear_message(
    header: str, message: str
) -> None:
    with pytest.raises(BadRequest, match=message) as caught:
        decode_metadata(header)
    assert caught.value.status == 400
    assert caught.value.message.startswith("Upload-Metadata ")


def test_a_very_long_bad_key_is_truncated_in_the_message() -> None:
    with pytest.raises(BadRequest) as caught:
        decode_metadata("(" * 10_000)
    assert len(caught.value.message) < 200


def test_metadata_text_decodes_utf8_and_replaces_the_rest() -> None:
    assert metadata_text({"name": "ünï".encode(), "bin": b"\xff", "flag": None}) == {
        "name": "ünï",
        "bin": "\ufffd",
        "flag": None,
    }


# -- numbers, versions, content types -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("5", 5),
        (" 42 ", 42),
        ("007", 7),
        ("9223372036854775807", 2**63 - 1),
    ],
)
def test_parse_uint_accepts(value: str, expected: int) -> None:
    assert parse_uint("Upload-Length", value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "-1",
        "-0",
        "+5",
        "1.0",
        "1e3",
        "0x10",
        "1 000",
        "٣",  # a digit, but not an ASCII one
        "²",
        "9223372036854775808",  # 2**63
        "99999999999999999999",
        "1" * 400,
    ],
)
def test_parse_uint_rejects(value: str) -> None:
    with pytest.raises(BadRequest, match=r"^Upload-Offset must be a non-negative integer, got"):
        parse_uint("Upload-Offset", value)


def test_parse_uint_message_shows_a_bounded_value() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_uint("Upload-Length", "x" * 10_000)
    assert len(caught.value.message) < 120


def test_check_version_accepts_the_served_version() -> None:
    check_version("1.0.0")
    assert TUS_VERSION == "1.0.0"


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "missing"), ("0.2.2", "'0.2.2'"), ("1.0", "'1.0'"), ("", "''"), ("2.0.0", "'2.0.0'")],
)
def test_check_version_rejects_others_with_412_and_tus_version(
    value: str | None, shown: str
) -> None:
    with pytest.raises(PreconditionFailed) as caught:
        check_version(value)
    assert caught.value.status == 412
    assert caught.value.headers == {"Tus-Version": "1.0.0"}
    assert caught.value.message == f"Tus-Resumable is {shown}; this server supports 1.0.0"


@pytest.mark.parametrize(
    "value",
    [
        OFFSET_CONTENT_TYPE,
        "application/offset+octet-stream; charset=x",
        "application/offset+octet-stream;charset=utf-8",
        "Application/Offset+Octet-Stream",
        "APPLICATION/OFFSET+OCTET-STREAM; Charset=X",
        "  application/offset+octet-stream  ",
    ],
)
def test_offset_content_type_accepted(value: str) -> None:
    check_offset_content_type(value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "missing"),
        ("", "missing"),
        ("application/octet-stream", "'application/octet-stream'"),
        ("application/offset+octet-streamx", "'application/offset+octet-streamx'"),
        ("text/plain; x=application/offset+octet-stream", None),
        ("application/offset octet-stream", None),
    ],
)
def test_offset_content_type_rejected_with_415(value: str | None, shown: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        check_offset_content_type(value)
    assert caught.value.status == 415
    assert caught.value.message.startswith(
        "Content-Type must be application/offset+octet-stream, got "
    )
    if shown is not None:
        assert caught.value.message.endswith(f"got {shown}")


# -- dates ----------------------------------------------------------------------------------------

IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


def test_http_date_is_an_imf_fixdate() -> None:
    assert http_date(datetime(2025, 6, 25, 16, 0, tzinfo=UTC)) == "Wed, 25 Jun 2025 16:00:00 GMT"
    assert http_date(datetime(2030, 1, 1, 0, 0, 5, 999_999, tzinfo=UTC)) == (
        "Tue, 01 Jan 2030 00:00:05 GMT"
    )


def test_http_date_converts_to_gmt() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert http_date(datetime(2025, 6, 25, 18, 0, tzinfo=plus_two)) == (
        "Wed, 25 Jun 2025 16:00:00 GMT"
    )


@given(st.datetimes(timezones=st.just(UTC)))
def test_http_date_always_matches_the_grammar(moment: datetime) -> None:
    assert IMF_FIXDATE.fullmatch(http_date(moment))


# -- Range ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, ByteRange(0, 4)),
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=9-9", 10, ByteRange(9, 9)),
        ("bytes=3-", 10, ByteRange(3, 9)),  # open range
        ("bytes=0-", 10, ByteRange(0, 9)),
        ("bytes=5-1000", 10, ByteRange(5, 9)),  # end clamped to the size
        ("bytes=-3", 10, ByteRange(7, 9)),  # suffix range
        ("bytes=-10", 10, ByteRange(0, 9)),
        ("bytes=-1000", 10, ByteRange(0, 9)),
        ("BYTES=1-2", 10, ByteRange(1, 2)),
        (" bytes = 1 - 2 ", 10, ByteRange(1, 2)),
        # multi-range requests: RFC 9110 lets a server ignore Range and send everything
        ("bytes=0-1,3-4", 10, None),
        ("bytes=0-1, -2", 10, None),
        # garbage and other units are ignored
        ("items=0-4", 10, None),
        ("bytes", 10, None),
        ("bytes=", 10, None),
        ("bytes=-", 10, None),
        ("bytes=4", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=1-x", 10, None),
        ("bytes=+1-2", 10, None),
        ("bytes=-+2", 10, None),
        ("bytes=1-2-3", 10, None),
        ("bytes=5-3", 10, None),  # last before first: invalid, so ignored
        ("bytes=0x1-2", 10, None),
        ("bytes=1.5-2", 10, None),
        ("bytes=²-", 10, None),  # a digit to str.isdigit, not to HTTP (Latin-1 header byte)
        ("bytes=1-³", 10, None),
        ("bytes=-¹", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),  # starts at the end
        ("bytes=10-20", 10),
        ("bytes=99999999999999999999999-", 10),
        ("bytes=-0", 10),  # empty suffix
        ("bytes=-5", 0),  # nothing to take a suffix of
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
    ],
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(ValueError, match=r"empty suffix range|range starts past the end"):
        parse_range(header, size)


def test_byte_range_length_is_inclusive() -> None:
    assert ByteRange(0, 0).length == 1
    assert ByteRange(7, 9).length == 3


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 1000))
def test_a_satisfiable_range_lies_inside_the_file(first: int, last: int, size: int) -> None:
    try:
        wanted = parse_range(f"bytes={first}-{last}", size)
    except ValueError:
        assert first >= size
        return
    if last < first:
        assert wanted is None
        return
    assert wanted is not None
    assert 0 <= wanted.start <= wanted.end < size
    assert wanted.start == first
    assert wanted.end == min(last, size - 1)
