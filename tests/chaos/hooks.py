"""The chaos run's webhook receivers: flaky, verifying, and the checks of what they got.

Two real HTTP receivers on loopback (tests/support/webhook_receiver.py) verify every request
with `standardwebhooks`; a seeded share of answers is a 500, another share comes only after
the sender's timeout. Two endpoints are registered before the workload: one for every type,
one for `job.refunded` and `job.failed` only. After the jobs drain and the outbox settles,
what the receivers saw is compared with the jobs and events tables and with the outbox.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from app.jobs.status import TERMINAL
from tests.support.webhook_receiver import Receiver, running_receiver

TIMEOUT_SECONDS = 1.0  # WEBHOOK_TIMEOUT_SECONDS: generous on a loaded 2-core machine
SLOW_SECONDS = TIMEOUT_SECONDS + 1.0  # a slow answer comes after the sender gave up
RATE_500 = 0.20
RATE_SLOW = 0.05
ENV = {
    "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    "WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
    "WEBHOOK_RETRY_BASE_SECONDS": "0.05",
    "WEBHOOK_RETRY_MAX_SECONDS": "0.5",
    # With 25% of answers failing, 40 attempts in a row fail with probability 1e-24: a
    # message ending `failed` is the service's fault, not bad luck.
    "WEBHOOK_MAX_ATTEMPTS": "40",
}
ALL = "all"
SUBSET = "refunded_failed"
SUBSCRIPTIONS: dict[str, list[str] | None] = {
    ALL: None,  # every type
    SUBSET: ["job.refunded", "job.failed"],
}
EVENT_COMPLETED = "event.completed"
JOB_DRIFT = "job.drift"
TERMINAL_VALUES = {s.value for s in TERMINAL}


@dataclass
class Flaky:
    """A seeded receiver behaviour: some 500s, some answers after the sender's timeout."""

    seed: str
    served_500: int = 0
    served_slow: int = 0
    served_ok: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def __call__(self, _: Receiver, __: str, ___: int) -> tuple[int, float, dict[str, str]]:
        with self._lock:
            draw = self._rng.random()
            if draw < RATE_500:
                self.served_500 += 1
                return 500, 0.0, {}
            if draw < RATE_500 + RATE_SLOW:
                self.served_slow += 1  # processed, but the sender hung up: it sends it again
                return 200, SLOW_SECONDS, {}
            self.served_ok += 1
            return 204, 0.0, {}


@dataclass
class Endpoint:
    name: str
    types: list[str] | None
    receiver: Receiver
    behaviour: Flaky
    id: str = ""
    secret: str = ""

    def takes(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types


@dataclass
class HookReport:
    figures: dict[str, Any] = field(default_factory=dict)
    violations: dict[str, Any] = field(default_factory=dict)


class Hooks:
    """The receivers (started at once) and the endpoints registered at them."""

    def __init__(self, seed: int) -> None:
        self._exit = ExitStack()
        self.endpoints: dict[str, Endpoint] = {}
        for name, types in SUBSCRIPTIONS.items():
            behaviour = Flaky(f"receiver-{seed}-{name}")
            receiver = self._exit.enter_context(running_receiver(behaviour))
            self.endpoints[name] = Endpoint(name, types, receiver, behaviour)
        self.settle_seconds = 0.0
        self.settled = False

    def close(self) -> None:
        self._exit.close()

    def register(self, api_url: str, key: str) -> None:
        """POST /v1/webhook-endpoints for each receiver, as an order service would."""
        with httpx.Client(base_url=api_url, timeout=30) as client:
            for ep in self.endpoints.values():
                body: dict[str, Any] = {"url": ep.receiver.url, "description": f"chaos {ep.name}"}
                if ep.types is not None:
                    body["event_types"] = ep.types
                r = client.post(
                    "/v1/webhook-endpoints", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                r.raise_for_status()
                answer = r.json()
                ep.id, ep.secret = str(answer["id"]), str(answer["secret"])
                with ep.receiver.lock:
                    ep.receiver.secrets.append(ep.secret)

    def secrets(self) -> dict[str, str]:
        return {f"webhook secret {ep.name}": ep.secret for ep in self.endpoints.values()}

    def wait_settled(self, db: str, limit: float, say: Any) -> bool:
        """Until no message is pending (bounded), then until the receivers are idle."""
        started = time.monotonic()
        last = 0.0
        left: int | None = None
        while time.monotonic() - started < limit:
            left = _pending(db)
            if left == 0:
                break
            if time.monotonic() - last >= 3:
                last = time.monotonic()
                say(f"  webhooks: {left} messages pending")
            time.sleep(0.5)
        self.settle_seconds = time.monotonic() - started
        self.settled = left == 0
        # A slow answer still being served adds a late duplicate: let it land.
        idle_by = time.monotonic() + SLOW_SECONDS + 1
        while time.monotonic() < idle_by and any(
            ep.receiver.in_flight for ep in self.endpoints.values()
        ):
            time.sleep(0.1)
        return self.settled

    def check(self, db: str, moved: set[str] | None = None) -> HookReport:
        """`moved`: the ids of jobs a reconciliation took from one end to another."""
        return _check(db, self, moved or set())


def _pending(db: str) -> int | None:
    try:
        with psycopg.connect(db, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*) FROM webhook_messages WHERE status = 'pending'"
            ).fetchone()
        return int(row[0]) if row else None
    except psycopg.Error:
        return None


def _check(db: str, hooks: Hooks, moved: set[str]) -> HookReport:
    with psycopg.connect(db) as conn:
        jobs: dict[str, str] = {
            str(job_id): status for job_id, status in conn.execute("SELECT id, status FROM jobs")
        }
        event_jobs: dict[str, set[str]] = {}
        for event_id, job_id in conn.execute("SELECT event_id, job_id FROM event_jobs"):
            event_jobs.setdefault(event_id, set()).add(str(job_id))
        outbox = conn.execute(
            "SELECT id, endpoint_id::text, event_type, job_id::text, event_id, status, attempts "
            "FROM webhook_messages"
        ).fetchall()
        written_twice = [
            f"{ep} {kind} {what} x{n}"
            for ep, kind, what, n in conn.execute(
                "SELECT endpoint_id::text, event_type, coalesce(job_id::text, event_id), count(*) "
                "FROM webhook_messages GROUP BY 1, 2, 3 HAVING count(*) > 1"
            )
        ]
    by_id = {row[0]: row for row in outbox}
    names = {ep.id: ep.name for ep in hooks.endpoints.values()}
    statuses: dict[str, int] = {}
    for row in outbox:
        statuses[row[5]] = statuses.get(row[5], 0) + 1

    not_delivered: list[str] = []  # (a)
    no_completed: list[str] = []  # (b)
    invalid: list[str] = []  # (c)
    unsubscribed: list[str] = []  # (d)
    wrong_job: list[str] = []  # a job message that does not match the job
    wrong_event: list[str] = []  # an event.completed for an event not complete, or mismatched
    unknown: list[str] = []  # at a receiver, not in the outbox (or for another endpoint)
    unseen: list[str] = []  # delivered in the outbox, never answered 2xx by the receiver
    delivered = duplicates = requests = cut_off = 0
    drifts_got: dict[tuple[str, str], int] = {}  # (endpoint, job id): unique job.drift messages
    for ep in hooks.endpoints.values():
        r = ep.receiver
        with r.lock:
            copies = list(r.received)
            invalid += [f"{ep.name} {wid}" for wid in r.unverified]
            requests += sum(r.seen.values())
            cut_off += len(r.incomplete)
        got = {m.webhook_id: m for m in copies}
        delivered += len(got)
        duplicates += len(copies) - len(got)
        jobs_got: set[tuple[str, str]] = set()
        events_got: set[str] = set()
        for wid, m in got.items():
            kind = str(m.body.get("type"))
            data = m.body.get("data") or {}
            sent = by_id.get(wid)
            if sent is None or names.get(sent[1]) != ep.name:
                unknown.append(f"{ep.name} {wid} {kind}")
            if not ep.takes(kind):
                unsubscribed.append(f"{ep.name} {wid} {kind}")
            if kind == EVENT_COMPLETED:
                event_id = str(data.get("event_id"))
                events_got.add(event_id)
                listed = {str(j.get("id")) for j in data.get("jobs", [])}
                open_jobs = [
                    j["id"] for j in data.get("jobs", []) if j.get("status") not in TERMINAL_VALUES
                ]
                if listed != event_jobs.get(event_id, set()) or open_jobs:
                    wrong_event.append(f"{ep.name} {wid} {event_id}: open jobs {open_jobs[:3]}")
            elif kind == JOB_DRIFT:
                job_id = str(data.get("id"))
                drifts_got[(ep.name, job_id)] = drifts_got.get((ep.name, job_id), 0) + 1
                if data.get("status") != jobs.get(job_id) or not data.get("drift"):
                    wrong_job.append(f"{ep.name} {wid} {kind} {job_id}: job is {jobs.get(job_id)}")
            elif kind.startswith("job."):
                job_id, said = str(data.get("id")), kind.removeprefix("job.")
                jobs_got.add((kind, job_id))
                now = jobs.get(job_id)
                # A held payment may be refunded later by a person: needs_refund, then refunded.
                allowed = {now, "needs_refund"} if now == "refunded" else {now}
                if job_id in moved:  # failed, then settled by a reconciliation
                    allowed.add("failed")
                if data.get("status") != said or said not in allowed:
                    wrong_job.append(f"{ep.name} {wid} {kind} {job_id}: job is {now}")
            else:
                unknown.append(f"{ep.name} {wid} type {kind}")
        for job_id, status in jobs.items():
            kind = f"job.{status}"
            if status in TERMINAL_VALUES and ep.takes(kind) and (kind, job_id) not in jobs_got:
                not_delivered.append(f"{ep.name} {kind} {job_id}")
        if ep.takes(EVENT_COMPLETED):
            for event_id, members in event_jobs.items():
                complete = all(jobs.get(j) in TERMINAL_VALUES for j in members)
                if complete and event_id not in events_got:
                    no_completed.append(f"{ep.name} {event_id}")
        for row in outbox:
            if row[1] == ep.id and row[5] == "delivered" and row[0] not in got:
                unseen.append(f"{ep.name} {row[0]} {row[2]}")

    figures = {
        "webhook messages written": len(outbox),
        "webhook messages by status": statuses,
        "webhook messages delivered (unique at receivers)": delivered,
        "webhook duplicates seen": duplicates,
        "webhook requests": requests,
        "webhook requests cut off by the sender (deadline or kill)": cut_off,
        "webhook 500s served": sum(e.behaviour.served_500 for e in hooks.endpoints.values()),
        "webhook timeouts served": sum(e.behaviour.served_slow for e in hooks.endpoints.values()),
        "webhook attempts per message (max)": max((row[6] for row in outbox), default=0),
        "webhooks settled": hooks.settled,
        "job.drift messages at receivers": sum(drifts_got.values()),
        "webhooks time to settle seconds": round(hooks.settle_seconds, 1),
    }
    violations = {
        "webhooks still pending": statuses.get("pending", 0),
        "webhooks failed": [f"{names.get(r[1])} {r[0]} {r[2]}" for r in outbox if r[5] == "failed"],
        "terminal jobs not delivered to an endpoint": not_delivered,
        "complete events without event.completed": no_completed,
        "webhook signatures invalid": invalid,
        "webhooks delivered outside the subscription": unsubscribed,
        "webhook job messages not matching the job": wrong_job,
        "event.completed not matching the event": wrong_event,
        "webhook messages written twice": written_twice,
        "webhooks at a receiver not in its outbox": unknown,
        "webhooks delivered in the outbox, not at the receiver": unseen,
        "job.drift messages at a receiver more than once for a job": [
            f"{ep} {job_id} x{n}" for (ep, job_id), n in sorted(drifts_got.items()) if n > 1
        ],
    }
    return HookReport(figures, violations)
