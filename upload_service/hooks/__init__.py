"""Hooks: a pre-create hook asked before an upload is created, and events after state changes
(post-create, post-finish, post-terminate, post-expire) delivered from the transactional outbox.

What a Python hook author uses: ``PreCreate`` (what a pre-create callable is given), ``Reject``
(what it raises to refuse), and ``upload_service.outbox.OutboxEvent`` (what a post callable is
given). ``signing.verify`` checks a webhook's ``Upload-Signature``.
"""

from __future__ import annotations

from upload_service.hooks.pre_create import PreCreate as PreCreate
from upload_service.hooks.pre_create import Reject as Reject
