"""Unit tests: the entity-tag and HTTP-date parsers of tus/conditional.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from upload_service.tus.conditional import (
    EntityTag,
    parse_etag,
    parse_etag_list,
    parse_http_date,
)

NOV_6 = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"abc"', EntityTag("abc")),
        ('W/"abc"', EntityTag("abc", weak=True)),
        ('""', EntityTag("")),
        ('  "a,b"  ', EntityTag("a,b")),
        ('"\xe9"', EntityTag("\xe9")),  # obs-text
        ("abc", None),
        ('w/"abc"', None),  # W/ is case-sensitive
        ('"a"b"', None),
        ('"a b"', None),
        ('"a"', EntityTag("a")),
    ],
)
def test_parse_etag(value: str, expected: EntityTag | None) -> None:
    assert parse_etag(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"a", W/"b"', (EntityTag("a"), EntityTag("b", weak=True))),
        ('"a,b",,"c" ,', (EntityTag("a,b"), EntityTag("c"))),
        ("", ()),
        (" , ", ()),
        ('"a" "b"', None),
        ('"a", b', None),
        ("*", None),  # "*" is the whole field, handled by the caller
    ],
)
def test_parse_etag_list(value: str, expected: tuple[EntityTag, ...] | None) -> None:
    assert parse_etag_list(value) == expected


def test_strong_and_weak_comparison() -> None:
    strong, weak = EntityTag("x"), EntityTag("x", weak=True)
    assert strong.strong_match(strong)
    assert not strong.strong_match(weak)
    assert not weak.strong_match(weak)
    assert weak.weak_match(strong)
    assert not strong.weak_match(EntityTag("y"))
    assert str(weak) == 'W/"x"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", NOV_6),
        ("Sunday, 06-Nov-94 08:49:37 GMT", NOV_6),
        ("Sun Nov  6 08:49:37 1994", NOV_6),
        ("Sun, 06 Nov 1994 08:49:37 +0200", None),
        ("Sun, 06 Nov 1994 08:49:37", None),
        ("Sun, 31 Nov 1994 08:49:37 GMT", None),
        ("1994-11-06T08:49:37Z", None),
        ("", None),
    ],
)
def test_parse_http_date(value: str, expected: datetime | None) -> None:
    assert parse_http_date(value) == expected
