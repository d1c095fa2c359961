"""Standard Webhooks signature checks for the service's deliveries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Mapping, Union


class WebhookVerificationError(Exception):
    """The delivery is not authentic (bad signature, stale timestamp, missing header)."""


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify_webhook(
    payload: Union[bytes, str],
    headers: Mapping[str, str],
    secret: str,
    tolerance_s: int = 300,
) -> Any:
    """Checks ``webhook-id``, ``webhook-timestamp`` (within ``tolerance_s`` of now) and
    ``webhook-signature`` (any of its space-separated ``v1,`` signatures) and returns the parsed
    body. Raises :class:`WebhookVerificationError` otherwise."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        signatures = lower["webhook-signature"].split()
    except (KeyError, ValueError) as e:
        raise WebhookVerificationError(f"missing or malformed header: {e}") from None
    if abs(time.time() - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"timestamp {timestamp} is outside the tolerance")
    body = payload.decode() if isinstance(payload, bytes) else payload
    expected = sign(secret, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise WebhookVerificationError("no matching signature")
    return json.loads(body)
