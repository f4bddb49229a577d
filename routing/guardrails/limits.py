"""Limits on what comes in, the same for the API and for producers writing straight to the prompts topic.

The API answers a breach with 413 (too large) or 400 and publishes nothing; the classify stage sends a
message that breaks them to the dead-letter topic with the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from core.messages import PromptMessage
from core.settings import Settings

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class Breach:
    """One broken rule: the field, a readable reason, and the HTTP status the API answers with."""

    field: str
    reason: str
    status: Literal[400, 413]
    code: str


def prompt_breaches(message: PromptMessage, settings: Settings, *, max_prompt_chars: int | None = None,
                    check_reply_to: bool = True) -> list[Breach]:
    breaches: list[Breach] = []
    limit = min(settings.max_prompt_chars, max_prompt_chars or settings.max_prompt_chars)
    if len(message.prompt) > limit:
        breaches.append(Breach("prompt", f"prompt has {len(message.prompt)} characters; the limit is {limit}", 413,
                               "prompt_too_long"))
    if not REQUEST_ID_PATTERN.match(message.request_id):
        breaches.append(Breach("request_id", "request_id must be 1-128 characters of A-Z a-z 0-9 . _ : -", 400,
                               "invalid_request_id"))
    breaches += metadata_breaches(message.metadata, settings)
    if check_reply_to and message.reply_to is not None and not settings.reply_topic_regex().match(message.reply_to):
        # reply_to names a topic the provider stage writes to (and a broker may create): never a foreign one.
        breaches.append(Breach("reply_to", f"reply_to {message.reply_to[:200]!r} is not a reply topic of this router",
                               400, "invalid_reply_to"))
    return breaches


def metadata_breaches(metadata: dict[str, str], settings: Settings) -> list[Breach]:
    if len(metadata) > settings.max_metadata_items:
        return [Breach("metadata", f"metadata has {len(metadata)} entries; the limit is {settings.max_metadata_items}",
                       413, "metadata_too_large")]
    for key, value in metadata.items():
        if len(key) > settings.max_metadata_key_chars:
            return [Breach("metadata", f"metadata key {key[:40]!r}... is longer than {settings.max_metadata_key_chars}"
                                       " characters", 413, "metadata_too_large")]
        if len(value) > settings.max_metadata_value_chars:
            return [Breach("metadata", f"metadata value of {key[:40]!r} has {len(value)} characters; the limit is "
                                       f"{settings.max_metadata_value_chars}", 413, "metadata_too_large")]
    size = len(json.dumps(metadata, ensure_ascii=False))
    if size > settings.max_metadata_chars:
        return [Breach("metadata", f"metadata is {size} characters as JSON; the limit is {settings.max_metadata_chars}",
                       413, "metadata_too_large")]
    return []


def deny_list_hit(text: str, deny_list: tuple[str, ...] | list[str]) -> str | None:
    """The first deny-listed term found in ``text`` (case-insensitive, whole words), or None."""
    for term in deny_list:
        if term and re.search(rf"(?<!\w){re.escape(term)}(?!\w)", text, flags=re.IGNORECASE):
            return term
    return None
