"""RFC 9110 conditional requests for a read-only representation: validators and preconditions.

Pure functions over header strings. A conditional header that does not parse is ignored, as if it
were absent (RFC 9110 section 13.1), never an error; the one exception is ``If-Range``, whose
validator can only *allow* a range: one that does not parse matches nothing, so the whole
representation is sent, which is always correct.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text. Starlette decodes
# header bytes as latin-1, so obs-text arrives as U+0080-U+00FF.
_ETAGC = r"[\x21\x23-\x7e\x80-\xff]*"
_ETAG = re.compile(rf'(W/)?"({_ETAGC})"')
# one element of a comma-separated list: empty elements are allowed (RFC 9110 section 5.6.1)
_LIST_ELEMENT = re.compile(rf'[ \t]*(?:(W/)?"({_ETAGC})")?[ \t]*(,|$)')
_ASCTIME = re.compile(
    r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}"
)


@dataclass(frozen=True, slots=True)
class EntityTag:
    opaque: str  # without the quotes
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'

    def strong_match(self, other: EntityTag) -> bool:
        return not self.weak and not other.weak and self.opaque == other.opaque

    def weak_match(self, other: EntityTag) -> bool:
        return self.opaque == other.opaque


@dataclass(frozen=True, slots=True)
class Validators:
    """What the server knows of the selected representation."""

    etag: EntityTag
    last_modified: datetime | None  # whole seconds, UTC


@dataclass(frozen=True, slots=True)
class Conditions:
    """Raw values of the conditional request headers (None when absent)."""

    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_range: str | None = None


def parse_etag(value: str) -> EntityTag | None:
    match = _ETAG.fullmatch(value.strip())
    if match is None:
        return None
    return EntityTag(match.group(2), weak=match.group(1) is not None)


def parse_etag_list(value: str) -> tuple[EntityTag, ...] | None:
    """``#entity-tag``; None when any element is malformed. (Commas may occur inside a tag.)"""
    tags: list[EntityTag] = []
    position = 0
    while position < len(value):
        match = _LIST_ELEMENT.match(value, position)
        if match is None:
            return None
        if match.group(2) is not None:
            tags.append(EntityTag(match.group(2), weak=match.group(1) is not None))
        if not match.group(3):
            break
        position = match.end()
    return tuple(tags)


def parse_http_date(value: str) -> datetime | None:
    """An HTTP-date in any of its three forms (IMF-fixdate, RFC 850, asctime), or None."""
    text = value.strip()
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # asctime carries no zone and means GMT; anything else is invalid
        return moment.replace(tzinfo=UTC) if _ASCTIME.fullmatch(text) else None
    if moment.utcoffset() != timedelta(0):
        return None  # HTTP-dates are always GMT
    return moment.astimezone(UTC)


def not_modified(validators: Validators, conditions: Conditions) -> bool:
    """True when a GET should be answered 304 (RFC 9110 section 13.2.2, steps 3 and 4)."""
    if conditions.if_none_match is not None:
        if conditions.if_none_match.strip() == "*":
            return True  # the representation exists
        tags = parse_etag_list(conditions.if_none_match)
        if tags is not None:  # If-Modified-Since is ignored beside a (valid) If-None-Match
            return any(tag.weak_match(validators.etag) for tag in tags)
    if conditions.if_modified_since is not None and validators.last_modified is not None:
        since = parse_http_date(conditions.if_modified_since)
        if since is not None:
            return validators.last_modified <= since
    return False


def range_allowed(validators: Validators, conditions: Conditions) -> bool:
    """Whether a Range may be served: no If-Range, or one whose validator matches strongly (an
    entity-tag by strong comparison, a date by exact equality with Last-Modified)."""
    if conditions.if_range is None:
        return True
    value = conditions.if_range.strip()
    if value.startswith(('"', "W/")):
        tag = parse_etag(value)
        return tag is not None and tag.strong_match(validators.etag)
    date = parse_http_date(value)
    return date is not None and date == validators.last_modified
