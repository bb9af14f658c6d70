"""The chaos workload: a seeded plan of payments and events, and the threads that post it.

The plan is a pure function of the seed (same seed, same payments, events, duplicates,
replays, conflicts and customers). Timing under faults is not repeatable, so the judge
accepts every answer the contract allows for what happened (a `200` instead of a `202` after a
`503` whose commit may have landed) and nothing else.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from devtools.sandbox.control import SandboxControl

# Initial status at iamport; "unknown" payments are never created there.
STATUS_WEIGHTS = {"ready": 82, "paid": 8, "cancelled": 4, "failed": 3, "unknown": 3}
VBANK_SHARE = 0.25  # virtual accounts among the payments
WRONG_HINT = 0.1  # events that name the wrong pay_method: iamport's record must decide
REFUND_SHARE = 0.5  # events that ask for paid payments to be refunded at once
# A PortOne V2 account's payments: (status, method) at PortOne and their weights; "unknown"
# ones are never created there. A convenience-store payment has no V2 call that stops it.
V2_STATUS_WEIGHTS = {
    ("VIRTUAL_ACCOUNT_ISSUED", "virtual_account"): 45,
    ("PAID", "card"): 28,
    ("PAID", "virtual_account"): 4,
    ("CANCELLED", "card"): 5,
    ("FAILED", "card"): 4,
    ("READY", "card"): 3,
    ("PENDING", "virtual_account"): 2,
    ("PENDING", "convenience_store"): 3,
    ("PAID", "convenience_store"): 3,
    ("unknown", "card"): 3,
}
RETRY_DEADLINE_SECONDS = 120.0  # an event still not accepted after this long is a violation
API_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ChaosAccount:
    """One merchant account of the workload, as the service's accounts file names it."""

    name: str
    imp_key: str
    tier: str | None
    weight: int  # its share of the events
    api: str = "v1"  # "v2": a PortOne V2 store, its payments named by payment_id
    store_id: str | None = None  # v2: its store at PortOne


# Two merchants and an agency's sub-merchant (its calls must all carry Tier A01).
ACCOUNTS = (
    ChaosAccount("main", "chaos_imp_key", None, 50),
    ChaosAccount("shop2", "chaos_shop2_key", None, 30),
    ChaosAccount("agency-a01", "chaos_agency_key", "A01", 20),
    # PortOne V2: its own store and API secret; closes and refunds under Idempotency-Keys.
    ChaosAccount("portone-v2", "", None, 20, api="v2", store_id="chaos-store-v2"),
)
BY_NAME = {a.name: a for a in ACCOUNTS}
V1_ACCOUNTS = tuple(a for a in ACCOUNTS if a.api == "v1")
V2_ACCOUNTS = tuple(a for a in ACCOUNTS if a.api == "v2")


def is_v2(account: str) -> bool:
    return BY_NAME[account].api == "v2"


def ref_id(ref: dict[str, Any]) -> str:
    """The payment an event's entry names, by imp_uid (v1) or payment_id (v2)."""
    return str(ref.get("imp_uid") or ref["payment_id"])


@dataclass
class Planned:
    """One payment of the plan."""

    imp_uid: str
    merchant_uid: str
    status: str
    pay_method: str = "cvs"
    account: str = "main"
    v2_method: str | None = None  # v2: its method at PortOne (status is then PortOne's)

    @property
    def v2(self) -> bool:
        return self.v2_method is not None


@dataclass
class Action:
    """One POST of the plan at offset `at` seconds: new, concurrent, replay or conflict."""

    kind: str  # new | concurrent | replay | conflict
    event_id: str
    body: dict[str, Any]
    at: float
    fresh_imp_uids: list[str] = field(default_factory=list)  # only in a conflicting body

    @property
    def account(self) -> str:
        return str(self.body["account"])


@dataclass
class Plan:
    seed: int
    payments: list[Planned]
    actions: list[Action]
    pays: list[tuple[float, str]]  # (offset, imp_uid): a customer tries to pay
    bodies: dict[str, dict[str, Any]]  # event_id -> the original body

    @property
    def conflict_imp_uids(self) -> list[tuple[str, str]]:
        """(account, imp_uid) of each payment only a conflicting body names."""
        return [
            (a.account, u) for a in self.actions if a.kind == "conflict" for u in a.fresh_imp_uids
        ]


def make_plan(seed: int, n_payments: int, duration: float) -> Plan:
    """The whole workload, from the seed alone."""
    rng = random.Random(seed)
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    payments = [
        Planned(
            f"imps_c{seed}_{i:05d}",
            f"order-{seed}-{i}",
            rng.choices(statuses, weights)[0],
            "vbank" if rng.random() < VBANK_SHARE else "cvs",
        )
        for i in range(n_payments)
    ]
    order = payments[:]
    rng.shuffle(order)
    actions: list[Action] = []
    bodies: dict[str, dict[str, Any]] = {}
    posted: list[Planned] = []
    chunks: list[list[Planned]] = []
    i = 0
    while i < len(order):
        size = rng.randint(1, 50)
        chunks.append(order[i : i + size])
        i += size
    step = duration / max(1, len(chunks))
    weights_by_account = [a.weight for a in ACCOUNTS]
    for k, chunk in enumerate(chunks):
        # An event speaks for one account: its payments are that account's.
        account = rng.choices(ACCOUNTS, weights_by_account)[0].name
        for p in chunk:
            p.account = account
            if is_v2(account):
                _as_v2(p, rng)
        refs = list(chunk)
        same = [p for p in posted if p.account == account]
        if same and rng.random() < 0.2:  # overlap: imp_uids already named by earlier events
            refs += rng.sample(same, min(len(same), rng.randint(1, 5)))
        if rng.random() < 0.05:  # the same imp_uid twice in one event counts once
            refs.append(rng.choice(refs))
        posted.extend(chunk)
        event_id = f"chaos-{seed}-{k}"

        def hint(p: Planned) -> str:
            if rng.random() >= WRONG_HINT:
                return p.pay_method
            return "cvs" if p.pay_method == "vbank" else "vbank"

        field_ = "payment_id" if is_v2(account) else "imp_uid"

        body: dict[str, Any] = {
            "account": account,
            "event_id": event_id,
            "sku": f"SKU-{rng.randint(1, 40)}",
            "reason": "out of stock",
            "occurred_at": "2026-11-25T06:00:00Z",
            "payments": [
                {field_: p.imp_uid, "merchant_uid": p.merchant_uid, "pay_method": hint(p)}
                if rng.random() < 0.9
                else {field_: p.imp_uid}
                for p in refs
            ],
        }
        if rng.random() < REFUND_SHARE:
            body["on_paid"] = "refund"
        bodies[event_id] = body
        at = k * step + rng.uniform(0, step)
        kind = "concurrent" if rng.random() < 0.08 else "new"
        actions.append(Action(kind, event_id, body, at))
        if rng.random() < 0.12:
            actions.append(Action("replay", event_id, body, at + rng.uniform(0.5, 8)))
        if rng.random() < 0.06:
            fresh = [f"imps_c{seed}_x{k}"]
            conflicting = dict(body, sku=body["sku"] + "-other")
            conflicting["payments"] = [*body["payments"], {field_: fresh[0]}]
            actions.append(
                Action("conflict", event_id, conflicting, at + rng.uniform(0.5, 8), fresh)
            )
    actions.sort(key=lambda a: a.at)
    # Customers pay barcodes (v1) and deposit into issued virtual accounts (v2).
    payable = [p.imp_uid for p in payments if p.status in ("ready", "VIRTUAL_ACCOUNT_ISSUED")]
    n_pays = max(3, n_payments // 25)
    pays = sorted((rng.uniform(0, duration), rng.choice(payable)) for _ in range(n_pays))
    return Plan(seed, payments, actions, pays, bodies)


def _as_v2(p: Planned, rng: random.Random) -> None:
    """Make a planned payment a PortOne V2 one: its status and method drawn anew."""
    ((status, method),) = rng.choices(list(V2_STATUS_WEIGHTS), list(V2_STATUS_WEIGHTS.values()))
    p.status, p.v2_method = status, method
    # The event's hint: a virtual account is vbank; anything else is named as a barcode is.
    p.pay_method = "vbank" if method == "virtual_account" else "cvs"


def create_at_sandbox(
    sandbox: SandboxControl, plan: Plan, hook_url: Callable[[str, str], str]
) -> None:
    """Every planned payment (but the unknown ones) and every conflict's fresh one, at iamport,
    each its account's merchant's, with the hook URLs of its account (`hook_url(name,
    account)`)."""

    def merchant(account: str) -> dict[str, Any]:
        a = BY_NAME[account]
        return {"imp_key": a.imp_key, "tier": a.tier}

    specs = [
        {
            **merchant(p.account),
            "imp_uid": p.imp_uid,
            "merchant_uid": p.merchant_uid,
            "amount": 1000 + (i % 50) * 100,
            "status": p.status,
            "pay_method": p.pay_method,
            "confirm_url": hook_url("cvs-confirm", p.account),
            "notice_url": hook_url("notifications", p.account),
        }
        for i, p in enumerate(plan.payments)
        if p.status != "unknown" and not p.v2
    ]
    specs += [
        {
            **merchant(account),
            "imp_uid": u,
            "merchant_uid": f"order-{u}",
            "amount": 1000,
            "confirm_url": hook_url("cvs-confirm", account),
        }
        for account, u in plan.conflict_imp_uids
        if not is_v2(account)
    ]
    for i in range(0, len(specs), 500):
        sandbox.create_payments(specs[i : i + 500])
    create_at_v2(sandbox, plan)


def create_at_v2(sandbox: SandboxControl, plan: Plan) -> None:
    """The V2 accounts' planned payments (but the unknown ones) and their conflicts' fresh
    ones, at the sandbox's PortOne V2, each in its account's store."""

    def store(account: str) -> str:
        return str(BY_NAME[account].store_id)

    specs = [
        {
            "payment_id": p.imp_uid,
            "store_id": store(p.account),
            "amount": 1000 + (i % 50) * 100,
            "status": p.status,
            "method": p.v2_method,
            "order_name": p.merchant_uid,
        }
        for i, p in enumerate(plan.payments)
        if p.v2 and p.status != "unknown"
    ]
    specs += [
        {"payment_id": u, "store_id": store(account), "amount": 1000, "method": "card"}
        for account, u in plan.conflict_imp_uids
        if is_v2(account)
    ]
    for i in range(0, len(specs), 500):
        sandbox.v2.create_payments(specs[i : i + 500])


@dataclass
class Post:
    """What one POST of an action met, retried through 503s until a final answer."""

    action: Action
    statuses: list[int | str] = field(default_factory=list)  # ints, or "timeout"/"conn:<Error>"
    final: int | None = None
    body: dict[str, Any] | None = None
    done_at: float | None = None  # monotonic


@dataclass
class PayTry:
    imp_uid: str
    started_at: float  # monotonic
    allowed: bool | None
    error: str | None = None


class Workload:
    """Posts the plan's actions on schedule, retrying the same body through 503s."""

    def __init__(
        self, plan: Plan, api_url: str, key: str, sandbox_url: str, posters: int = 8
    ) -> None:
        self.plan = plan
        self.api_url = api_url
        self.key = key
        self.sandbox_url = sandbox_url
        self.posters = posters
        self.posts: list[Post] = []
        self.pays: list[PayTry] = []
        self.accepted_at: dict[str, float] = {}  # event_id -> first 200/202 (monotonic)
        self._accepted = {eid: threading.Event() for eid in plan.bodies}
        self._lock = threading.Lock()
        self._http = httpx.Client(
            base_url=api_url,
            timeout=API_TIMEOUT_SECONDS,
            headers={"Authorization": f"Bearer {key}"},
            limits=httpx.Limits(max_connections=posters * 2 + 4),
        )
        self.started = 0.0
        self.finished = threading.Event()

    # -- progress --------------------------------------------------------------------------

    @property
    def posted_events(self) -> int:
        return len(self.accepted_at)

    @property
    def retries_503(self) -> int:
        with self._lock:
            return sum(p.statuses.count(503) for p in self.posts)

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """Run the whole plan; returns when every action and every customer is done."""
        self.started = time.monotonic()
        payer = threading.Thread(target=self._customers, name="customers", daemon=True)
        payer.start()
        with ThreadPoolExecutor(self.posters, thread_name_prefix="poster") as pool:
            for action in self.plan.actions:
                self._sleep_until(action.at)
                if action.kind == "concurrent":
                    pool.submit(self._post_guarded, action)
                    pool.submit(self._post_guarded, action)
                else:
                    pool.submit(self._post_guarded, action)
        payer.join()
        self._http.close()
        self.finished.set()

    def _sleep_until(self, offset: float) -> None:
        delay = self.started + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _post_guarded(self, action: Action) -> None:
        try:
            self._post(action)
        except Exception as exc:  # a bug here must show as a violation, not vanish in a pool
            post = Post(action, [f"crash:{type(exc).__name__}: {exc}"])
            with self._lock:
                self.posts.append(post)

    def _post(self, action: Action) -> None:
        if action.kind in ("replay", "conflict"):
            # Only meaningful once the original is in: a conflict posted first would be new.
            self._accepted[action.event_id].wait(RETRY_DEADLINE_SECONDS + 30)
        post = Post(action)
        deadline = time.monotonic() + RETRY_DEADLINE_SECONDS
        while True:
            status: int | str
            try:
                r = self._http.post("/v1/stockout-events", json=action.body)
                status = r.status_code
            except httpx.TimeoutException:
                status = "timeout"
            except httpx.TransportError as exc:
                status = f"conn:{type(exc).__name__}"
            post.statuses.append(status)
            if status in (503, "timeout") or isinstance(status, str):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.3)
                continue
            post.final = status
            if status in (200, 202):
                post.body = r.json()
                with self._lock:
                    self.accepted_at.setdefault(action.event_id, time.monotonic())
                self._accepted[action.event_id].set()
            break
        post.done_at = time.monotonic()
        with self._lock:
            self.posts.append(post)

    def _customers(self) -> None:
        v2_stores = {p.imp_uid: BY_NAME[p.account].store_id for p in self.plan.payments if p.v2}
        with SandboxControl(self.sandbox_url) as sandbox:
            for at, imp_uid in self.plan.pays:
                self._sleep_until(at)
                started = time.monotonic()
                if imp_uid in v2_stores:
                    self.pays.append(_deposit(sandbox, imp_uid, v2_stores[imp_uid], started))
                    continue
                try:
                    result = sandbox.pay(imp_uid)
                    self.pays.append(PayTry(imp_uid, started, bool(result["allowed"])))
                except httpx.HTTPError as exc:
                    self.pays.append(PayTry(imp_uid, started, None, type(exc).__name__))


def _deposit(sandbox: SandboxControl, payment_id: str, store_id: str | None, at: float) -> PayTry:
    """A customer deposits into a V2 virtual account (refused once it is closed)."""
    try:
        sandbox.v2.pay(payment_id, store_id)
        return PayTry(payment_id, at, True)
    except httpx.HTTPStatusError as exc:
        return PayTry(payment_id, at, False, f"HTTP {exc.response.status_code}")
    except httpx.HTTPError as exc:
        return PayTry(payment_id, at, None, type(exc).__name__)


@dataclass
class Judgement:
    """The workload's own findings (the job-level ones come from the checker)."""

    accepted_events: int = 0
    accepted_imp_uids: set[str] = field(default_factory=set)
    unexpected_statuses: list[str] = field(default_factory=list)
    wrong_bodies: list[str] = field(default_factory=list)
    paid_after_accepted: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def judge(workload: Workload) -> Judgement:
    """Every answer against what the contract allows for its action."""
    j = Judgement()
    by_event: dict[str, list[Post]] = {}
    for post in workload.posts:
        by_event.setdefault(post.action.event_id, []).append(post)
        kind = post.action.kind
        j.counts[kind] = j.counts.get(kind, 0) + 1
        saw_503 = 503 in post.statuses
        odd = [s for s in post.statuses[:-1] if s != 503] if post.final is not None else []
        allowed: set[int] = {
            "new": {202, 200} if saw_503 else {202},
            "concurrent": {202, 200},
            "replay": {200},
            "conflict": {409},
        }[kind]
        if post.final is None or post.final not in allowed or odd:
            j.unexpected_statuses.append(f"{kind} {post.action.event_id}: {post.statuses}")
        if post.final in (200, 202) and post.body is not None:
            want = {ref_id(p) for p in post.action.body["payments"]}
            got = {job["payment_id"] for job in post.body.get("jobs", [])}
            if want != got or post.body.get("event_id") != post.action.event_id:
                j.wrong_bodies.append(f"{post.action.event_id}: jobs {sorted(got ^ want)[:5]}")
    for event_id, posts in by_event.items():
        firsts = [p for p in posts if p.action.kind in ("new", "concurrent")]
        created = sum(1 for p in firsts if p.final == 202)
        if created > 1:
            j.unexpected_statuses.append(f"{event_id}: {created} answers 202 for one event")
        if created == 0 and firsts and not any(503 in p.statuses for p in firsts):
            j.unexpected_statuses.append(f"{event_id}: no 202 and no 503 to explain it")
        if any(p.final in (200, 202) for p in firsts):
            j.accepted_events += 1
            j.accepted_imp_uids.update(
                ref_id(p) for p in workload.plan.bodies[event_id]["payments"]
            )
    by_uid_accepted: dict[str, float] = {}
    for event_id, at in workload.accepted_at.items():
        for p in workload.plan.bodies[event_id]["payments"]:
            uid = ref_id(p)
            by_uid_accepted[uid] = min(at, by_uid_accepted.get(uid, at))
    # Only a barcode asks the till guard (confirm_url); a deposit to a virtual account cannot
    # be refused, which is why a paid virtual account ends needs_refund or refunded instead.
    barcodes = {p.imp_uid for p in workload.plan.payments if p.pay_method == "cvs" and not p.v2}
    for pay in workload.pays:
        accepted = by_uid_accepted.get(pay.imp_uid)
        if pay.imp_uid not in barcodes:
            continue
        if pay.allowed and accepted is not None and accepted < pay.started_at:
            j.paid_after_accepted.append(pay.imp_uid)
    return j
