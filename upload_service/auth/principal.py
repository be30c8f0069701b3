"""Who the caller is, as authentication established it: the one value of ``auth`` that reaches the
tus handler. ``ANONYMOUS`` is the caller of a service that runs open (no authentication
configured), who may reach every upload. A leaf: it imports nothing of the service."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller. ``owner`` is None only for the anonymous caller of an open service, and for
    the bearer of a signed download URL, who reaches the one upload named by ``only``.

    ``max_size`` and ``allowed_types`` (parsed patterns, see ``tus.content_types``) are this
    caller's own caps on the uploads it creates, on top of the service's (None / empty: none of its
    own).

    ``ticket`` is set for the bearer of an upload ticket (``upload_service.tickets``): the
    uploads it creates are the issuer's (``owner``), and it reaches only those it created;
    ``stamp`` holds the ticket's metadata, set on every upload it creates.
    """

    owner: str | None = None
    max_size: int | None = None
    allowed_types: tuple[str, ...] = ()
    only: str | None = None
    ticket: str | None = None
    stamp: tuple[tuple[str, str], ...] = ()

    def may_access(self, owner: str | None) -> bool:
        """Whether this caller may reach an upload owned by ``owner``."""
        return self.owner is None or self.owner == owner

    @property
    def restricted(self) -> bool:
        """Whether this caller reaches less than every upload (an open service's anonymous
        caller reaches them all)."""
        return self.owner is not None or self.only is not None or self.ticket is not None

    def may_reach(self, upload_id: str, owner: str | None, ticket: str | None = None) -> bool:
        """Whether this caller may reach the upload ``upload_id`` owned by ``owner`` and made
        with ``ticket`` (a ticket's bearer reaches only what its ticket made)."""
        return (
            (self.only is None or self.only == upload_id)
            and (self.ticket is None or self.ticket == ticket)
            and self.may_access(owner)
        )


ANONYMOUS = Principal()
