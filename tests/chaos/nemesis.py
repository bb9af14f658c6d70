"""The nemesis: a seeded thread that breaks iamport, workers, Redis and Postgres at intervals,
and changes payments behind the service's back, as a merchant does in iamport's admin."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from devtools.sandbox.control import SandboxControl

KINDS = ("faults", "token_expiry", "kill_worker", "redis", "postgres", "calm", "admin")
WEIGHTS = (5, 2, 4, 2, 2, 1, 2)
# What an admin strike does, with the job statuses it looks for: refund a paid payment (its
# job needs_refund, or not ended yet: it will meet the refund on its next lookup), take a
# payment for a failed one (its job failed), create and void an unpaid one that iamport did not
# know yet (its job failed), and mark paid a cancelled one (its job cancelled: a drift). At
# most this many of each per account, status and strike.
ADMIN_ACTIONS = {
    "refund": ("needs_refund", "waiting"),
    "pay": ("failed",),
    "cancel": ("failed",),
    "drift": ("cancelled",),
}
ADMIN_PER_ACCOUNT = 1
HANG_SECONDS = 2.5  # longer than the services' IAMPORT_TIMEOUT_SECONDS=1: a real timeout
# A late apply lands this long after the call arrived; the run's CANCEL_SETTLE_SECONDS must
# be longer, or a careful service would (rightly) be blamed for the sandbox's slowness.
LATE_APPLY_SECONDS = (1.5, 4.0)


class Target(Protocol):
    """What the nemesis can break: the stack of the chaos run."""

    def kill_worker(self, rng: random.Random) -> str: ...
    def stop_redis(self) -> None: ...
    def start_redis(self) -> None: ...
    def stop_postgres(self) -> None: ...
    def start_postgres(self) -> None: ...
    def admin_candidates(self) -> dict[str, list[tuple[str, str]]]:
        """Terminal jobs by status: (imp_uid, account) each."""
        ...

    def payment_spec(self, imp_uid: str, account: str) -> dict[str, Any]:
        """How to create, at the sandbox, a payment of the account iamport did not know."""
        ...


@dataclass
class Strike:
    at: float  # seconds since the run started
    kind: str
    detail: str
    seconds: float = 0.0  # how long the action (an outage) lasted


def _rate(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 2)


def fault_menu(rng: random.Random) -> dict[str, Callable[[], dict[str, Any]]]:
    """Every iamport fault the sandbox can inject, each as a function drawing its settings."""
    return {
        "5xx": lambda: {"error_rate": _rate(rng, 0.05, 0.3)},
        "html_502": lambda: {"error_rate": _rate(rng, 0.05, 0.2), "error_style": "html"},
        "json_500_after_apply": lambda: {
            "error_after_rate": _rate(rng, 0.03, 0.15),
            "error_style": "json",
        },
        "5xx_after_apply": lambda: {"error_after_rate": _rate(rng, 0.03, 0.15)},
        "429": lambda: {
            "rate_429": _rate(rng, 0.05, 0.3),
            "retry_after": _rate(rng, 0.1, 0.5),
        },
        "429_http_date": lambda: {
            "rate_429": _rate(rng, 0.03, 0.1),
            "retry_after": float(rng.randint(1, 2)),
            "retry_after_style": "date",
        },
        "token_expiry": lambda: {"token_expiry_rate": _rate(rng, 0.01, 0.05)},
        "timeout_before": lambda: {"timeout_before_rate": _rate(rng, 0.03, 0.15)},
        "timeout_after": lambda: {"timeout_after_rate": _rate(rng, 0.03, 0.15)},
        "lost_answer": lambda: {"drop_after_rate": _rate(rng, 0.03, 0.15)},
        "apply_after_hangup": lambda: {
            "late_apply_rate": _rate(rng, 0.03, 0.15),
            "late_apply_seconds": round(rng.uniform(*LATE_APPLY_SECONDS), 1),
        },
        "trickle": lambda: {
            "trickle_rate": _rate(rng, 0.03, 0.1),
            "trickle_interval_ms": rng.choice((300, 800)),
        },
        "latency": lambda: {
            "latency_ms": rng.randint(5, 80),
            "latency_jitter_ms": rng.randint(0, 40),
        },
        "odd_timestamps": lambda: {"odd_timestamps_rate": _rate(rng, 0.2, 1.0)},
        "unknown_status": lambda: {"unknown_status_rate": _rate(rng, 0.05, 0.2)},
        "missing_history": lambda: {"missing_history_rate": _rate(rng, 0.1, 0.5)},
    }


def fault_profile(rng: random.Random) -> dict[str, Any]:
    """A random mix of two to four iamport faults from the menu."""
    menu = fault_menu(rng)
    chosen = rng.sample(sorted(menu), rng.randint(2, 4))
    profile: dict[str, Any] = {"hang_seconds": HANG_SECONDS, "seed": rng.randint(0, 2**31)}
    for name in chosen:
        profile.update(menu[name]())
    return profile


@dataclass(frozen=True)
class AdminChange:
    """One payment changed behind the service's back, and what its job was then."""

    at: float  # seconds since the run started
    imp_uid: str
    account: str
    action: str  # refund | pay | cancel | drift (ADMIN_ACTIONS)
    job_status: str


# Faults PortOne V2 cannot have: it has no tokens (the token-expiry strike, expire_tokens, is
# iamport's alone too), and its Payment has no iamport timestamps or cancel_history.
V1_ONLY_FAULTS = frozenset({"token_expiry", "odd_timestamps", "missing_history"})
REQUESTED_SECONDS = (0.5, 3.0)  # a REQUESTED cancellation finishes this long after


def v2_fault_profile(rng: random.Random) -> dict[str, Any]:
    """A random mix of two to four of the faults PortOne V2 can have, for one V2 store."""
    menu = fault_menu(rng)
    chosen = rng.sample(sorted(set(menu) - V1_ONLY_FAULTS), rng.randint(2, 4))
    profile: dict[str, Any] = {"hang_seconds": HANG_SECONDS, "seed": rng.randint(0, 2**31)}
    for name in chosen:
        profile.update(menu[name]())
    return profile


def v2_settings(rng: random.Random) -> dict[str, Any]:
    """How V2 cancels behave meanwhile: a share answered REQUESTED, finishing later (mostly
    SUCCEEDED; sometimes FAILED, which leaves the payment paid)."""
    return {
        "requested_rate": _rate(rng, 0.0, 0.5),
        "requested_seconds": round(rng.uniform(*REQUESTED_SECONDS), 1),
        "requested_outcome": "FAILED" if rng.random() < 0.2 else "SUCCEEDED",
    }


@dataclass
class Nemesis:
    """Strikes every `mean_interval` seconds (jittered) until stopped; every kind at least once.

    iamport misbehaves from the first second (a fault profile is set at once), so the first
    events meet faults too; then each kind strikes once in a seeded order, then at random.
    """

    seed: int
    target: Target
    sandbox_url: str
    mean_interval: float
    started: float = field(default_factory=time.monotonic)
    strikes: list[Strike] = field(default_factory=list)
    active: str = "none"
    errors: list[str] = field(default_factory=list)
    admin_changes: list[AdminChange] = field(default_factory=list)
    v2_stores: tuple[str, ...] = ()  # PortOne V2 stores: each gets its own fault profile

    def __post_init__(self) -> None:
        self.rng = random.Random(f"nemesis-{self.seed}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        first = list(KINDS)
        self.rng.shuffle(first)
        self._queue = first

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop striking and wait for a strike in progress to finish (outages are healed)."""
        self._stop.set()
        self._thread.join(120)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.strikes:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out

    def _next_kind(self) -> str:
        if self._queue:
            return self._queue.pop()
        return self.rng.choices(KINDS, WEIGHTS)[0]

    def _run(self) -> None:
        with SandboxControl(self.sandbox_url) as sandbox:
            kind = "faults"
            while True:
                self.strike(kind, sandbox)
                if self._stop.wait(self.rng.uniform(0.5, 1.5) * self.mean_interval):
                    return
                kind = self._next_kind()

    def strike(self, kind: str, sandbox: SandboxControl) -> Strike:
        """One strike of `kind`, recorded (the run's last admin strike comes this way too)."""
        began = time.monotonic()
        try:
            detail = self._strike(kind, sandbox)
        except Exception as exc:  # the run must see a nemesis that could not act
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            detail = "error"
        strike = Strike(
            round(began - self.started, 1), kind, detail, round(time.monotonic() - began, 1)
        )
        self.strikes.append(strike)
        return strike

    def _strike(self, kind: str, sandbox: SandboxControl) -> str:
        rng = self.rng
        if kind == "faults":
            profile = fault_profile(rng)
            sandbox.clear_faults()
            sandbox.set_faults(**profile)
            shown = sorted(k for k in profile if k not in ("seed", "hang_seconds", "retry_after"))
            self.active = " ".join(f"{k}={profile[k]}" for k in shown)
            return str(profile) + self._v2_faults(sandbox)
        if kind == "calm":
            sandbox.clear_faults()
            self._v2_calm(sandbox)
            self.active = "none"
            return "faults cleared"
        if kind == "token_expiry":
            sandbox.expire_tokens()
            return "every token expired"
        if kind == "kill_worker":
            return self.target.kill_worker(rng)
        if kind == "admin":
            return self.admin(sandbox)
        outage = rng.uniform(1.0, 4.0)
        was = self.active
        if kind == "redis":
            self.active = f"{was} +REDIS DOWN"
            self.target.stop_redis()
            time.sleep(outage)
            self.target.start_redis()
        else:
            self.active = f"{was} +POSTGRES DOWN"
            self.target.stop_postgres()
            time.sleep(outage)
            self.target.start_postgres()
        self.active = was
        return f"down {outage:.1f}s"

    def admin_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.admin_changes:
            what = f"{c.action} (job not ended)" if c.job_status == "waiting" else c.action
            out[what] = out.get(what, 0) + 1
        return out

    def admin(self, sandbox: SandboxControl) -> str:
        """Change a few payments, per account and action, whose jobs have ended (ADMIN_ACTIONS);
        each imp_uid once in the run. A change the payment no longer fits (409: a customer or
        the service changed it meanwhile) is skipped."""
        rng = self.rng
        done = {c.imp_uid for c in self.admin_changes}
        candidates = self.target.admin_candidates()
        made: list[str] = []
        for action, job_status in (
            (action, status) for action, statuses in ADMIN_ACTIONS.items() for status in statuses
        ):
            by_account: dict[str, list[str]] = {}
            for imp_uid, account in candidates.get(job_status, []):
                if imp_uid not in done:
                    by_account.setdefault(account, []).append(imp_uid)
            for account in sorted(by_account):
                uids = by_account[account]
                rng.shuffle(uids)
                n = 0
                for imp_uid in uids[:8]:
                    if n >= ADMIN_PER_ACCOUNT:
                        break
                    if self._admin_one(sandbox, action, imp_uid, account):
                        done.add(imp_uid)
                        self.admin_changes.append(
                            AdminChange(
                                round(time.monotonic() - self.started, 1),
                                imp_uid,
                                account,
                                action,
                                job_status,
                            )
                        )
                        made.append(f"{action} {imp_uid}")
                        n += 1
        return ", ".join(made) or "nothing to change"

    def _admin_one(self, sandbox: SandboxControl, action: str, imp_uid: str, account: str) -> bool:
        try:
            status = sandbox.payment(imp_uid)["status"]
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
            status = None
        if action == "cancel":
            if status is not None:
                return False  # only one iamport did not know when the job ended
            sandbox.create_payment(**self.target.payment_spec(imp_uid, account))
        elif status is None or (action == "refund" and status != "paid"):
            return False
        try:
            if action == "drift":
                if status != "cancelled":
                    return False
                # iamport showing paid a payment the service saw cancelled: a contradiction
                # only a person can settle.
                sandbox.set_status(imp_uid, "paid")
            elif action == "refund":
                sandbox.admin(imp_uid, "refund")
            elif action == "pay":
                sandbox.admin(imp_uid, "pay")
            else:
                sandbox.admin(imp_uid, "cancel")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 409:
                return False
            raise
        return True

    # -- PortOne V2 ----------------------------------------------------------------------------

    def _v2_faults(self, sandbox: SandboxControl) -> str:
        """Each V2 store its own profile (drawn from the faults V2 can have) and REQUESTED
        cancels; what is set, for the strike's detail."""
        shown = []
        for store_id in self.v2_stores:
            profile = v2_fault_profile(self.rng)
            settings = v2_settings(self.rng)
            sandbox.v2.clear_faults(store_id)
            sandbox.v2.set_faults(store_id, **profile)
            sandbox.v2.settings(**settings)
            shown.append(f" v2 {store_id}: {profile} {settings}")
        return "".join(shown)

    def _v2_calm(self, sandbox: SandboxControl) -> None:
        for store_id in self.v2_stores:
            sandbox.v2.clear_faults(store_id)
        if self.v2_stores:
            sandbox.v2.settings(requested_rate=0.0)
