"""Signed webhooks: how the server signs a delivery, and the check a receiver makes.

The header is `Remote-Magic-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed
with the subscription's secret (in the style of Stripe's). A receiver recomputes the HMAC over the raw
body bytes, compares in constant time, and refuses old timestamps so a captured delivery cannot be
replayed later. The delivery id (`Remote-Magic-Delivery`) is the same on every retry of one delivery:
keep the ids you have handled and ignore a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

SIGNATURE_HEADER = "Remote-Magic-Signature"
DELIVERY_HEADER = "Remote-Magic-Delivery"
EVENT_HEADER = "Remote-Magic-Event"
TOLERANCE_S = 300


class InvalidSignature(ValueError):
    """The delivery was not signed with this secret, or too long ago."""


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header's value for `body`, sent at `timestamp` (now by default)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(
    secret: str, body: bytes, header: str, tolerance_s: int = TOLERANCE_S, now: float | None = None
) -> dict:
    """Check a delivery's signature header against its raw body; return the parsed event.

    Raises InvalidSignature when the header is malformed, no `v1` signature matches, or the timestamp
    is more than `tolerance_s` seconds away from now."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise InvalidSignature("the signature header has no timestamp") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise InvalidSignature("the delivery's timestamp is outside the tolerance")
    expected = _mac(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", [])):
        raise InvalidSignature("no signature matches")
    return json.loads(body)
