"""Receiving MLflow's model registry webhooks: signature check and payload parsing, stdlib only.

MLflow 3 (OSS, SQL stores) POSTs a JSON body {"entity", "action", "timestamp", "data"} with the
headers X-MLflow-Delivery-Id, X-MLflow-Timestamp (Unix seconds) and, when the webhook has a
secret, X-MLflow-Signature: "v1," + base64(HMAC-SHA256(secret, "<delivery id>.<timestamp>.<raw
body>")) (mlflow/webhooks/delivery.py, after the Standard Webhooks scheme). verify() checks all
three before anything reads the body, so an unsigned, forged or replayed delivery changes
nothing; the errors name what was wrong, never the secret or the expected signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
MAX_AGE_S = 300.0  # a delivery older (or further in the future) than this is a replay
ALIAS_CREATED = ("model_version_alias", "created")  # MLflow sends it whenever an alias is set


class Rejected(Exception):
    """A delivery that is not acted on: status 401 (not authentic) or 400 (not a webhook body)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Event:
    entity: str
    action: str
    data: dict[str, Any] = field(default_factory=dict)
    delivery_id: str = ""

    @property
    def kind(self) -> str:
        return f"{self.entity}.{self.action}"


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The X-MLflow-Signature value MLflow sends for this delivery."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode("utf-8"), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None,
           max_age_s: float = MAX_AGE_S) -> str:
    """Check the delivery's signature and age; returns its delivery id, else raises Rejected(401)."""
    got = {str(k).lower(): str(v) for k, v in headers.items()}
    missing = [h for h in (DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) if not got.get(h.lower())]
    if missing:
        raise Rejected(401, f"not a signed MLflow webhook delivery: missing {', '.join(missing)}")
    delivery_id, stamp = got[DELIVERY_HEADER.lower()], got[TIMESTAMP_HEADER.lower()]
    try:
        sent_at = int(stamp)
    except ValueError:
        raise Rejected(401, f"{TIMESTAMP_HEADER} is not a Unix time in seconds") from None
    age = (time.time() if now is None else now) - sent_at
    if abs(age) > max_age_s:
        raise Rejected(401, f"{TIMESTAMP_HEADER} is {abs(age):.0f} s away from this server's clock "
                            f"(at most {max_age_s:.0f} s): a replay, or a clock out of sync")
    expected = sign(secret, delivery_id, stamp, body)
    # Several space-separated signatures are allowed (secret rotation, as Standard Webhooks does).
    if not any(hmac.compare_digest(expected.encode(), s.encode())
               for s in got[SIGNATURE_HEADER.lower()].split()):
        raise Rejected(401, f"{SIGNATURE_HEADER} does not match the body: wrong secret, or the body "
                            "changed on the way")
    return delivery_id


def parse(body: bytes, delivery_id: str = "") -> Event:
    """The delivery's event; Rejected(400) when the body is not MLflow's webhook JSON."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entity"), str) \
            or not isinstance(doc.get("action"), str) or not isinstance(doc.get("data"), dict):
        raise Rejected(400, 'expected {"entity": ..., "action": ..., "data": {...}} (an MLflow '
                            "webhook body)")
    return Event(doc["entity"], doc["action"], doc["data"], delivery_id)


def alias_set(event: Event) -> tuple[str, str, str] | None:
    """(model name, alias, version) of a model_version_alias.created event, else None."""
    if (event.entity, event.action) != ALIAS_CREATED:
        return None
    values = [event.data.get(k) for k in ("name", "alias", "version")]
    if not all(isinstance(v, str | int) and str(v) for v in values):
        raise Rejected(400, f"{event.kind} without a name, alias and version in its data")
    name, alias, version = (str(v) for v in values)
    return name, alias, version
