"""The deliverer's statements: claim a due message under a lease, record the attempt, sweep.

A message is claimed with a lease (lease_token, lease_until) and FOR UPDATE SKIP LOCKED, so a
duplicated or lost wake-up changes nothing. The number of leases held per endpoint is capped
here, in Postgres, so a slow or dead receiver ties up at most that many senders; its backlog
waits in the table, not in Redis or in a worker's memory.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import Connection

from app.webhooks.delivery import AttemptResult

IN_FLIGHT_PER_ENDPOINT = 4

# Claims for one endpoint take turns on its row (NO KEY UPDATE does not block the outbox's
# inserts, which only take KEY SHARE), so the in-flight count below cannot be raced past.
LOCK_ENDPOINT = """
SELECT url, secret,
       CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous_secret
FROM webhook_endpoints WHERE id = %(ep)s AND enabled
FOR NO KEY UPDATE
"""
# The attempt is counted and its row written ahead, when the message is claimed: a sender
# that dies mid-call still leaves a trace, and a message that kills senders ends failed.
CLAIM = """
WITH busy AS (
  SELECT count(*) AS n FROM webhook_messages
  WHERE endpoint_id = %(ep)s AND status = 'pending' AND lease_until > now()
), due AS (
  SELECT id FROM webhook_messages
  WHERE endpoint_id = %(ep)s AND status = 'pending' AND next_attempt_at <= now()
    AND (lease_until IS NULL OR lease_until <= now())
  ORDER BY next_attempt_at, created_at, id
  LIMIT 1
  FOR UPDATE SKIP LOCKED
), claimed AS (
  UPDATE webhook_messages m SET lease_token = gen_random_uuid(), attempts = m.attempts + 1,
      lease_until = now() + make_interval(secs => %(lease)s)
  FROM due WHERE m.id = due.id AND (SELECT n FROM busy) < %(limit)s
  RETURNING m.id, m.payload, m.attempts, m.lease_token
), attempt AS (
  INSERT INTO webhook_attempts (message_id) SELECT id FROM claimed RETURNING id, message_id
)
SELECT c.id, c.payload, c.attempts, c.lease_token, a.id
FROM claimed c JOIN attempt a ON a.message_id = c.id
"""
FINISH = """
WITH a AS (
  UPDATE webhook_attempts SET duration_ms = %(ms)s, http_status = %(http)s,
      outcome = %(outcome)s, error = %(error)s
  WHERE id = %(attempt)s
)
UPDATE webhook_messages SET status = %(status)s::text, lease_token = NULL, lease_until = NULL,
    last_http_status = %(http)s, last_error = %(error)s,
    next_attempt_at = CASE WHEN %(status)s::text = 'pending'
                           THEN now() + make_interval(secs => %(delay)s) END,
    delivered_at = CASE WHEN %(status)s::text = 'delivered' THEN now() ELSE delivered_at END
WHERE id = %(id)s AND lease_token = %(token)s
RETURNING id
"""
# Endpoints with messages a sender could take now, and how many more senders each may have.
DUE = """
SELECT m.endpoint_id,
       count(*) FILTER (WHERE m.next_attempt_at <= now()
                        AND (m.lease_until IS NULL OR m.lease_until <= now())) AS due,
       count(*) FILTER (WHERE m.lease_until > now()) AS busy
FROM webhook_messages m JOIN webhook_endpoints e ON e.id = m.endpoint_id AND e.enabled
WHERE m.status = 'pending'
GROUP BY m.endpoint_id
"""
OLDEST_PENDING = """
SELECT m.endpoint_id, EXTRACT(EPOCH FROM now() - min(m.created_at))::float8
FROM webhook_messages m JOIN webhook_endpoints e ON e.id = m.endpoint_id AND e.enabled
WHERE m.status = 'pending'
GROUP BY m.endpoint_id
"""


@dataclass(frozen=True)
class Claimed:
    id: str
    payload: dict[str, Any]
    attempts: int
    lease_token: uuid.UUID
    attempt_id: int
    url: str
    secrets: list[str]  # the current secret first, then one rotated out less than 24 h ago


def claim(
    conn: Connection[Any],
    endpoint_id: uuid.UUID,
    lease_seconds: float,
    limit: int = IN_FLIGHT_PER_ENDPOINT,
) -> Claimed | None:
    """Lease the endpoint's next due message, if it has one and a free sending slot."""
    with conn.transaction():
        endpoint = conn.execute(LOCK_ENDPOINT, {"ep": endpoint_id}).fetchone()
        if endpoint is None:
            return None
        row = conn.execute(
            CLAIM, {"ep": endpoint_id, "lease": lease_seconds, "limit": limit}
        ).fetchone()
    if row is None:
        return None
    url, secret, previous = endpoint
    return Claimed(
        id=row[0],
        payload=row[1],
        attempts=row[2],
        lease_token=row[3],
        attempt_id=row[4],
        url=url,
        secrets=[secret] if previous is None else [secret, previous],
    )


def finish(
    conn: Connection[Any], claimed: Claimed, result: AttemptResult, status: str, delay: float
) -> bool:
    """Record the attempt and the message's new state; False if the lease was lost meanwhile."""
    row = conn.execute(
        FINISH,
        {
            "id": claimed.id,
            "token": claimed.lease_token,
            "attempt": claimed.attempt_id,
            "ms": result.duration_ms,
            "http": result.http_status,
            "outcome": result.outcome,
            "error": result.error,
            "status": status,
            "delay": delay,
        },
    ).fetchone()
    return row is not None


def due_endpoints(
    conn: Connection[Any], limit: int = IN_FLIGHT_PER_ENDPOINT
) -> dict[uuid.UUID, int]:
    """For each endpoint with due messages, how many senders to wake (its free slots)."""
    out = {}
    for endpoint_id, due, busy in conn.execute(DUE).fetchall():
        wake = min(int(due), max(limit - int(busy), 0))
        if wake:
            out[endpoint_id] = wake
    return out
