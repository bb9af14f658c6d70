"""The chaos run: the real stack in processes, a seeded workload, a seeded nemesis, a checker.

    python -m tests.chaos.run [--payments 5000] [--seed 1] [--duration 150] [--keep]

Embedded Postgres and Redis on fixed ports (so they restart where the services expect them),
migrations, the API under uvicorn, two Celery workers (threads pool), a separate beat and the
iamport sandbox. The workload posts events over HTTP with a real key while customers pay and
the nemesis strikes (changing payments behind the service's back too, while beat reconciles
every RECONCILE_INTERVAL_SECONDS); then faults are cleared, the jobs drain, the changed
payments' jobs settle, a final `stockout reconcile` round runs, and every job is compared with
the sandbox's truth. Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.jobs.status import TERMINAL_SQL, WAITING_SQL
from devtools.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from devtools.launch import ROOT, api_command, beat_command, create_key, sandbox_command
from devtools.sandbox.control import SandboxControl
from tests.chaos.hooks import ENV as HOOKS_ENV
from tests.chaos.hooks import HookReport, Hooks
from tests.chaos.nemesis import Nemesis
from tests.chaos.workload import (
    ACCOUNTS,
    BY_NAME,
    V1_ACCOUNTS,
    V2_ACCOUNTS,
    Judgement,
    Workload,
    create_at_sandbox,
    judge,
    make_plan,
    ref_id,
)
from tests.support.checker import Change, Reconciled, Report, check, check_reconciled
from tests.support.processes import service_env, start_worker, stop, wait_until
from tests.support.stack import migrate

IMP_KEY = "chaos_imp_key"
WORKER_CONCURRENCY = 16
TOLERATE_WORKER_CRASHES = False
RECONCILE_INTERVAL_SECONDS = 5
NON_TERMINAL_SQL = f"SELECT count(*) FROM jobs WHERE {WAITING_SQL}"


def _var(account: str, what: str) -> str:
    """The variable the accounts file names for an account's secret or hook token."""
    return f"CHAOS_{account.upper().replace('-', '_')}_{what}"


def _say(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Stack:
    """Every process of the service, started the way an operator would, and breakable."""

    base: Path
    seed: int
    # Per account (ACCOUNTS): its imp_secret and its hook token, random each run. The agency's
    # sub-merchant speaks with the agency's secret; each account has its own token.
    account_secrets: dict[str, str] = field(
        default_factory=lambda: {a.name: "chaos-secret-" + secrets.token_hex(12) for a in ACCOUNTS}
    )
    hook_tokens: dict[str, str] = field(
        default_factory=lambda: {a.name: "chaos-hook-" + secrets.token_hex(12) for a in ACCOUNTS}
    )
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)
    _n_workers: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.logs = self.base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pg = EmbeddedPostgres(self.base / "pg", fast_unsafe=True)
        self.redis = EmbeddedRedis(self.base / "redis")
        self.api_port = free_port()
        self.sandbox_port = free_port()
        self.hooks = Hooks(self.seed)  # the webhook receivers, listening already
        self.hooks_key = ""
        self.accounts_file = self.base / "accounts.toml"
        self.accounts_file.write_text(
            "".join(
                f'[accounts.{a.name}]\napi = "v1"\nimp_key = "{a.imp_key}"\n'
                f'imp_secret_env = "{_var(a.name, "SECRET")}"\n'
                f'webhook_token_env = "{_var(a.name, "HOOK")}"\n'
                + (f'tier = "{a.tier}"\n' if a.tier else "")
                for a in V1_ACCOUNTS
            )
            + self.v2_accounts_toml()
        )

    def v2_accounts_toml(self) -> str:
        """The PortOne V2 accounts: each its store and secret, at the sandbox; its timeout
        shorter than the nemesis's hangs, as IAMPORT_TIMEOUT_SECONDS is for v1."""
        return "".join(
            f'[accounts.{a.name}]\napi = "v2"\nstore_id = "{a.store_id}"\n'
            f'api_secret_env = "{_var(a.name, "SECRET")}"\n'
            f'base_url = "{self.sandbox_url}"\ntimeout_seconds = 1\n'
            for a in V2_ACCOUNTS
        )

    @property
    def v2_stores(self) -> dict[str, str]:
        """Each V2 account's store_id."""
        return {a.name: str(a.store_id) for a in V2_ACCOUNTS}

    def add_v2_stores(self) -> None:
        """The V2 accounts' stores at the sandbox, each with its account's secret."""
        with SandboxControl(self.sandbox_url) as sandbox:
            for a in V2_ACCOUNTS:
                sandbox.v2.add_store(str(a.store_id), self.account_secrets[a.name])

    @property
    def imp_secret(self) -> str:
        return self.account_secrets["main"]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def env(self) -> dict[str, str]:
        return service_env(
            DATABASE_URL=self.pg.url,
            REDIS_URL=self.redis.url,
            IAMPORT_BASE_URL=self.sandbox_url,
            IAMPORT_MAX_RPS="5000",
            ACCOUNTS_FILE=str(self.accounts_file),
            **{_var(name, "SECRET"): secret for name, secret in self.account_secrets.items()},
            **{_var(name, "HOOK"): token for name, token in self.hook_tokens.items()},
            # Longer than the nemesis's calls that apply after their caller hung up.
            CANCEL_SETTLE_SECONDS="6",
            # Beat's reconciliation acts during the run: a round every few seconds, over every
            # waiting job untouched for a moment and every job finished since the start.
            RECONCILE_INTERVAL_SECONDS=str(RECONCILE_INTERVAL_SECONDS),
            RECONCILE_STALE_SECONDS="3",
            LOG_LEVEL="INFO",  # so the logs scanned for secrets hold something
            LOG_JSON="true",
            **HOOKS_ENV,
        )

    def hook_url(self, name: str, account: str) -> str:
        return f"{self.api_url}/v1/iamport/{name}?token={self.hook_tokens[account]}"

    def merchants(self) -> list[str]:
        """The sandbox's accounts beyond main, its default: `KEY:SECRET[:TIER]`."""
        return [
            f"{a.imp_key}:{self.account_secrets[a.name]}" + (f":{a.tier}" if a.tier else "")
            for a in V1_ACCOUNTS
            if a.name != "main"
        ]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        out = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.pg.start()
        migrate(self.pg.url)
        self.redis.start()
        self._spawn(
            "sandbox",
            sandbox_command(
                self.sandbox_port,
                self.seed,
                IMP_KEY,
                self.imp_secret,
                merchants=self.merchants(),
            ),
        )
        self._spawn("api", api_command(self.api_port))
        for _ in range(2):
            self.add_worker()
        self._spawn("beat", beat_command(self.base / "beat-schedule"))
        wait_for_port(self.sandbox_port, 30)
        self.add_v2_stores()
        wait_for_port(self.api_port, 30)

    def add_worker(self) -> str:
        with self._lock:
            self._n_workers += 1
            name = f"w{self._n_workers}"
            self.procs[name] = start_worker(
                self.env,
                self.logs / f"{name}.log",
                concurrency=WORKER_CONCURRENCY,
                beat=False,
                name=name,
            )
            self.workers.append(name)
        return name

    def create_key(self) -> str:
        """`stockout keys create`, as an operator does."""
        return create_key(self.env, "chaos", ("events:write", "jobs:read"))

    def register_hooks(self) -> None:
        """An order service's key and its two webhook endpoints, before any job ends."""
        self.hooks_key = create_key(self.env, "chaos-hooks", ("webhooks:write",))
        self.hooks.register(self.api_url, self.hooks_key)

    # -- what the nemesis breaks ---------------------------------------------------------------

    def kill_worker(self, rng: random.Random) -> str:
        with self._lock:
            # Only a live one: a worker that died by itself is the supervisor's to count.
            live = [w for w in self.workers if self.procs[w].poll() is None]
            if not live:
                return "no live worker to kill"
            victim = rng.choice(live)
            self.workers.remove(victim)
        stop(self.procs[victim], signal.SIGKILL)
        new = self.add_worker()
        return f"SIGKILL {victim}, started {new}"

    def replace_crashed_workers(self, since: float) -> list[str]:
        """Restart workers that exited on their own, as a supervisor (systemd, k8s) would.

        Each crash is returned (and counted as a violation): a worker should survive a Redis
        or Postgres restart by itself.
        """
        crashed = []
        with self._lock:
            gone = [n for n in self.workers if self.procs[n].poll() is not None]
            for name in gone:
                self.workers.remove(name)
        for name in gone:
            why = _last_line(self.logs / f"{name}.log", ("Unrecoverable", "CRITICAL", "ERROR"))
            crashed.append(f"{name} exited {self.procs[name].returncode} at t={since:.0f}s: {why}")
            self.add_worker()
        return crashed

    def admin_candidates(self) -> dict[str, list[tuple[str, str]]]:
        """iamport jobs the admin strike may pick (reconciliation covers iamport accounts), by
        status, `waiting` for any not yet terminal (none while Postgres is down)."""
        out: dict[str, list[tuple[str, str]]] = {}
        try:
            with psycopg.connect(self.pg.url, connect_timeout=2) as conn:
                for imp_uid, account, status in conn.execute(
                    f"SELECT imp_uid, account, CASE WHEN {WAITING_SQL} THEN 'waiting' "
                    "ELSE status END FROM jobs WHERE api = 'v1' AND (status IN "
                    "('needs_refund', 'failed', 'cancelled') OR "
                    f"{WAITING_SQL}) ORDER BY imp_uid"
                ):
                    out.setdefault(status, []).append((imp_uid, account))
        except psycopg.Error:
            pass
        return out

    def payment_spec(self, imp_uid: str, account: str) -> dict[str, Any]:
        a = BY_NAME[account]
        return {
            "imp_key": a.imp_key,
            "tier": a.tier,
            "imp_uid": imp_uid,
            "merchant_uid": f"order-{imp_uid}",
            "amount": 1000,
            "status": "ready",
            "pay_method": "cvs",
            "confirm_url": self.hook_url("cvs-confirm", account),
            "notice_url": self.hook_url("notifications", account),
        }

    def stop_redis(self) -> None:
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis.start()

    def stop_postgres(self) -> None:
        self.pg.stop("immediate")

    def start_postgres(self) -> None:
        self.pg.start()

    # -- the end -------------------------------------------------------------------------------

    def heal(self) -> None:
        """Everything up again, whatever a failed strike left behind."""
        if self.redis.process is None:
            self.redis.start()
        try:
            with psycopg.connect(self.pg.url, connect_timeout=3):
                pass
        except psycopg.OperationalError:
            self.pg.start()

    def dead(self) -> list[str]:
        """Processes that should be running and are not."""
        live = {"sandbox", "api", "beat", *self.workers}
        return [n for n in sorted(live) if self.procs[n].poll() is not None]

    def shutdown(self) -> None:
        try:
            for name in ["beat", *self.workers, "api", "sandbox"]:
                proc = self.procs.get(name)
                if proc is not None:
                    stop(proc, signal.SIGTERM, timeout=15)
            self.redis.stop()
            try:
                self.pg.stop("immediate")
            except Exception as exc:
                _say(f"postgres stop: {exc}")
        finally:
            # Always: a receiver left to the interpreter's exit would hang it.
            self.hooks.close()


def _last_line(path: Path, marks: tuple[str, ...]) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    for mark in marks:  # in order of preference
        for line in reversed(lines):
            if mark in line:
                return line.strip()[:200]
    return lines[-1].strip()[:200] if lines else ""


def non_terminal(db: str) -> int | None:
    try:
        with psycopg.connect(db, connect_timeout=2) as conn:
            row = conn.execute(NON_TERMINAL_SQL).fetchone()
        return int(row[0]) if row else None
    except psycopg.Error:
        return None


def job_counts(db: str) -> tuple[int, int] | None:
    """(jobs, terminal jobs), or None while Postgres is down."""
    try:
        with psycopg.connect(db, connect_timeout=2) as conn:
            row = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {TERMINAL_SQL}) FROM jobs"
            ).fetchone()
        return (int(row[0]), int(row[1])) if row else None
    except psycopg.Error:
        return None


def current_token(sandbox_url: str, secret: str) -> str | None:
    """The token iamport hands out now (the same one the workers hold while it is valid)."""
    try:
        r = httpx.post(
            f"{sandbox_url}/users/getToken",
            json={"imp_key": IMP_KEY, "imp_secret": secret},
            timeout=5,
        )
        if r.status_code == 200:
            return str(r.json()["response"]["access_token"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return None


@dataclass
class Findings:
    """What the run shows beyond the per-job checker."""

    lost_imp_uids: list[str] = field(default_factory=list)
    lost_events: list[str] = field(default_factory=list)
    conflict_jobs: list[str] = field(default_factory=list)
    conflict_changed: list[str] = field(default_factory=list)
    unrecorded_cancels: list[str] = field(default_factory=list)
    worker_crashes: list[str] = field(default_factory=list)
    secrets_in_logs: list[str] = field(default_factory=list)
    dead_processes: list[str] = field(default_factory=list)
    nemesis_errors: list[str] = field(default_factory=list)
    jobs_by_account: dict[str, int] = field(default_factory=dict)


def find_lost(db: str, workload: Workload, j: Judgement, f: Findings) -> None:
    """Every accepted event and imp_uid in Postgres; conflicting bodies left no trace."""
    with psycopg.connect(db) as conn:
        jobs = {r[0] for r in conn.execute("SELECT imp_uid FROM jobs")}
        f.jobs_by_account = dict(
            conn.execute("SELECT account, count(*) FROM jobs GROUP BY 1 ORDER BY 1").fetchall()
        )
        events: dict[str, str] = dict(conn.execute("SELECT event_id, sku FROM events").fetchall())
        links: dict[str, set[str]] = {}
        for event_id, imp_uid in conn.execute(
            "SELECT ej.event_id, j.imp_uid FROM event_jobs ej JOIN jobs j ON j.id = ej.job_id"
        ):
            links.setdefault(event_id, set()).add(imp_uid)
    f.lost_imp_uids = sorted(j.accepted_imp_uids - jobs)
    for event_id in workload.accepted_at:
        body = workload.plan.bodies[event_id]
        want = {ref_id(p) for p in body["payments"]}
        if event_id not in events or links.get(event_id, set()) != want:
            f.lost_events.append(event_id)
        elif events[event_id] != body["sku"]:
            f.conflict_changed.append(event_id)
    f.conflict_jobs = sorted({u for _, u in workload.plan.conflict_imp_uids} & jobs)


def find_unrecorded(db: str, sandbox: SandboxControl) -> tuple[list[str], int]:
    """Cancel and refund calls iamport saw that no attempt row records (a run writes each ahead;
    a reconciliation writes none, so one sending a cancel or refund would show here), and how
    many batch lookups (reconciliation's alone) there were."""
    seen: dict[str, int] = {}
    calls = sandbox.calls()
    batches = sum(1 for c in calls if c["call"] == "lookup" and c["imp_uid"] is None)
    for call in calls:
        if call["call"] in ("cancel", "cancel_vbank", "refund") and call["imp_uid"]:
            seen[call["imp_uid"]] = seen.get(call["imp_uid"], 0) + 1
    with psycopg.connect(db) as conn:
        recorded: dict[str, int] = dict(
            conn.execute(
                "SELECT j.imp_uid, count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id "
                "WHERE a.call IN ('cancel', 'refund') AND a.outcome IS DISTINCT FROM 'not_sent' "
                "GROUP BY j.imp_uid"
            ).fetchall()
        )
    unrecorded = [
        f"{uid}: {n} calls, {recorded.get(uid, 0)} recorded"
        for uid, n in sorted(seen.items())
        if n > recorded.get(uid, 0)
    ]
    return unrecorded, batches


def scan_logs(logs: Path, needles: dict[str, str]) -> list[str]:
    """Which secret appears in which log file."""
    found = []
    for path in sorted(logs.glob("*.log")):
        text = path.read_text(errors="replace")
        for what, needle in needles.items():
            if needle and needle in text:
                found.append(f"{what} in {path.name}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--duration", type=float, default=None, help="workload seconds (default: by size)"
    )
    parser.add_argument("--drain-limit", type=float, default=180, help="seconds to drain")
    parser.add_argument(
        "--webhook-limit",
        type=float,
        default=45,
        help="seconds, after the drain, for every webhook message to be sent",
    )
    parser.add_argument(
        "--duration-limit", type=float, default=540, help="wall seconds for the whole run"
    )
    parser.add_argument("--nemesis-interval", type=float, default=None)
    parser.add_argument("--keep", action="store_true", help="keep logs and data even on success")
    parser.add_argument(
        "--tolerate-worker-crashes",
        action="store_true",
        help="count workers that die on their own as a figure, not a violation (as if a "
        "supervisor restarting them were part of the deployment)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    duration = args.duration or max(25.0, min(150.0, args.payments / 35))
    interval = args.nemesis_interval or max(2.5, duration / 25)
    # What the workload leaves of the wall-clock limit goes to draining (stack and check: ~60s).
    drain = max(30.0, min(args.drain_limit, args.duration_limit - duration - 60))
    global TOLERATE_WORKER_CRASHES
    TOLERATE_WORKER_CRASHES = args.tolerate_worker_crashes
    return run(
        args.seed,
        args.payments,
        duration,
        interval,
        drain,
        args.keep,
        args.json,
        args.webhook_limit,
    )


def run(
    seed: int,
    payments: int,
    duration: float,
    interval: float,
    drain_limit: float,
    keep: bool = False,
    json_out: Path | None = None,
    webhook_limit: float = 45,
) -> int:
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    t0 = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix=f"stockout-chaos-{seed}-"))
    base.chmod(0o755)
    stack = Stack(base, seed)
    _say(f"chaos: seed {seed}, {payments} payments, workload {duration:.0f}s, dir {base}")
    ok = False
    try:
        stack.start()
        key = stack.create_key()
        stack.register_hooks()
        plan = make_plan(seed, payments, duration)
        with SandboxControl(stack.sandbox_url) as sandbox:
            create_at_sandbox(sandbox, plan, stack.hook_url)
        _say(
            f"stack up in {time.monotonic() - t0:.1f}s: api {stack.api_url}, "
            f"{len(plan.actions)} posts, {len(plan.pays)} customers paying"
        )
        ok = _exercise(
            stack, plan, key, seed, interval, drain_limit, duration, json_out, webhook_limit
        )
        return 0 if ok else 1
    finally:
        stack.shutdown()
        if ok and not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            _say(f"logs and data kept in {base}")


def _exercise(
    stack: Stack,
    plan: Any,
    key: str,
    seed: int,
    interval: float,
    drain_limit: float,
    duration: float,
    json_out: Path | None,
    webhook_limit: float = 45,
) -> bool:
    db = stack.pg.url
    workload = Workload(plan, stack.api_url, key, stack.sandbox_url)
    nemesis = Nemesis(
        seed, stack, stack.sandbox_url, interval, v2_stores=tuple(stack.v2_stores.values())
    )
    tokens: set[str] = set()
    started = time.monotonic()
    runner = threading.Thread(target=workload.run, name="workload", daemon=True)
    runner.start()
    nemesis.start()
    last = 0.0
    crashes: list[str] = []
    while not workload.finished.wait(0.5):
        crashes += stack.replace_crashed_workers(time.monotonic() - started)
        token = current_token(stack.sandbox_url, stack.imp_secret)
        if token:
            tokens.add(token)
        if time.monotonic() - last >= 3:
            last = time.monotonic()
            counts = job_counts(db)
            jobs = f"{counts[1]}/{counts[0]} terminal" if counts else "db down"
            _say(
                f"  t={last - started:5.1f}s posted {workload.posted_events}/{len(plan.bodies)} "
                f"events, jobs {jobs}, 503 retries {workload.retries_503}, "
                f"strikes {len(nemesis.strikes)}, faults: {nemesis.active}"
            )
        if time.monotonic() - started > duration + 300:
            _say("workload did not finish in time")
            break
    nemesis.stop()
    stack.heal()
    workload_seconds = time.monotonic() - started
    with SandboxControl(stack.sandbox_url) as sandbox:
        sandbox.clear_faults()
        # A last admin strike, now that most jobs have ended: reconciliation meets it in the
        # drain.
        nemesis.strike("admin", sandbox)
        changes = [Change(c.imp_uid, c.action, c.job_status) for c in nemesis.admin_changes]
        for store_id in stack.v2_stores.values():
            sandbox.v2.clear_faults(store_id)
        drain_started = time.monotonic()
        drained = True
        settled = False
        final_round: dict[str, Any] = {}
        drifts_before: dict[str, str] = {}
        try:
            last = 0.0

            def drained_now() -> bool:
                nonlocal last
                crashes.extend(stack.replace_crashed_workers(time.monotonic() - started))
                left = non_terminal(db)
                if time.monotonic() - last >= 3:
                    last = time.monotonic()
                    _say(f"  draining: {left} jobs not terminal")
                return left == 0

            wait_until(drained_now, drain_limit, "every job terminal", interval=0.5)
            # A few of beat's rounds; a round a killed worker left holding its account's lock
            # (max(interval, 60s)) may keep them longer: the final round waits for the lock.
            left = drain_limit - (time.monotonic() - drain_started)
            settled = _reconciled(db, sandbox, changes, max(5.0, min(left, 25.0)), drained_now)
            # Then a round of our own, as an operator's `stockout reconcile`, and what it moved
            # settles too.
            drifts_before = _drifts(db)
            final_round = _final_round(stack.env)
            _reconciled(db, sandbox, changes, 30.0, drained_now)  # judged by the checker
        except AssertionError:
            drained = False
        drain_seconds = time.monotonic() - drain_started
        token = current_token(stack.sandbox_url, stack.imp_secret)
        if token:
            tokens.add(token)
        report = check(
            db,
            sandbox,
            changed=frozenset(c.imp_uid for c in changes),
            v2_stores=stack.v2_stores,
        )
        reconciled = check_reconciled(db, sandbox, changes, report.truth)
        # A drift recorded before the final round and its rounds is the same record after them.
        after = _drifts(db)
        reconciled.drift_twice += [
            f"{uid}: drift seen at {seen}, again at {after.get(uid)}"
            for uid, seen in sorted(drifts_before.items())
            if after.get(uid) != seen
        ]
        sandbox_stats = sandbox.stats()
        unrecorded, batches = find_unrecorded(db, sandbox)
    stack.hooks.wait_settled(db, webhook_limit, _say)
    moves, moved_jobs = reconciled_moves(stack.logs)
    for summary in final_round.get("accounts", []):
        for label, n in {**summary["moved"], **summary["drift"]}.items():
            moves[f"{label} (final round)"] = moves.get(f"{label} (final round)", 0) + n
    hook_report = stack.hooks.check(db, moved_jobs | _job_ids(db, changes))
    j = judge(workload)
    f = Findings(
        dead_processes=stack.dead(),
        nemesis_errors=nemesis.errors,
        unrecorded_cancels=unrecorded,
        worker_crashes=crashes,
    )
    find_lost(db, workload, j, f)
    needles = {
        **{f"{name}'s imp_secret": secret for name, secret in stack.account_secrets.items()},
        **{f"{name}'s webhook token": token for name, token in stack.hook_tokens.items()},
    }
    # sk_<prefix>_<secret>; the secret is URL-safe base64 and may hold "_" itself.
    needles["api key"] = key.split("_", 2)[2]
    needles["webhooks api key"] = stack.hooks_key.split("_", 2)[2]
    needles.update(stack.hooks.secrets())
    needles.update({f"iamport token {t[:6]}…": t for t in tokens})
    f.secrets_in_logs = scan_logs(stack.logs, needles)
    return _print_report(
        report,
        j,
        f,
        nemesis,
        sandbox_stats,
        workload,
        drained,
        drain_seconds,
        workload_seconds,
        len(tokens),
        json_out,
        hook_report,
        Reconciliation(reconciled, nemesis.admin_counts(), moves, settled, batches),
    )


@dataclass
class Reconciliation:
    """What reconciliation made of the payments changed behind the service's back."""

    report: Reconciled
    admin_changes: dict[str, int]
    moves: dict[str, int]  # jobs moved (or drift recorded), by kind, from the workers' logs
    settled: bool  # the changed payments' jobs ended where the gateway says in the drain
    batch_lookups: int = 0


def _reconciled(
    db: str, sandbox: SandboxControl, changes: list[Change], limit: float, drained: Any
) -> bool:
    """Until every changed payment's job is where the gateway says (bounded), with progress."""
    started = last = time.monotonic()
    while True:
        if drained():
            left = check_reconciled(db, sandbox, changes).not_where
            if not left:
                return True
            if time.monotonic() - last >= 3:
                last = time.monotonic()
                _say(
                    f"  reconciling: {len(left)} changed payments' jobs not settled, e.g. {left[0]}"
                )
        if time.monotonic() - started > limit:
            return False
        time.sleep(1.0)


def _final_round(env: dict[str, str]) -> dict[str, Any]:
    """`stockout reconcile --json`, retried while a round of beat's holds an account's lock
    (at most max(RECONCILE_INTERVAL_SECONDS, 60) after the worker holding it was killed)."""
    body: dict[str, Any] = {}
    deadline = time.monotonic() + 70
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "reconcile", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            body = json.loads(done.stdout)
        except ValueError:
            _say(f"  final round: exit {done.returncode}: {done.stderr[-300:]}")
            return {}
        skipped = [s["account"] for s in body.get("accounts", []) if s.get("skipped")]
        if not skipped or time.monotonic() > deadline:
            break
        _say(f"  final round: skipped {skipped}, a round holds the lock; again")
        time.sleep(2.0)
    looked = {s["account"]: s["looked_up"] for s in body.get("accounts", [])}
    _say(f"  final round: looked up {looked}")
    return body


def reconciled_moves(logs: Path) -> tuple[dict[str, int], set[str]]:
    """What beat's rounds did, from the workers' JSON logs: moves by kind, and the job ids."""
    moves: dict[str, int] = {}
    jobs: set[str] = set()
    for path in sorted(logs.glob("w*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if '"reconciled"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") != "reconciled":
                continue
            moves[str(entry.get("move"))] = moves.get(str(entry.get("move")), 0) + 1
            jobs.add(str(entry.get("job_id")))
    return moves, jobs


def _drifts(db: str) -> dict[str, str]:
    """imp_uid -> when its job's drift was seen, for every job holding one."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT imp_uid, drift->>'seen_at' FROM jobs WHERE drift IS NOT NULL"
        ).fetchall()
    return {str(uid): str(seen) for uid, seen in rows}


def _job_ids(db: str, changes: list[Change]) -> set[str]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT id::text FROM jobs WHERE imp_uid = ANY(%s)", ([c.imp_uid for c in changes],)
        ).fetchall()
    return {r[0] for r in rows}


def _print_report(
    report: Report,
    j: Judgement,
    f: Findings,
    nemesis: Nemesis,
    sandbox_stats: dict[str, Any],
    workload: Workload,
    drained: bool,
    drain_seconds: float,
    workload_seconds: float,
    n_tokens: int,
    json_out: Path | None,
    hooks: HookReport | None = None,
    rec: Reconciliation | None = None,
) -> bool:
    pays_allowed = sum(1 for p in workload.pays if p.allowed)
    figures: dict[str, Any] = {
        "seed": workload.plan.seed,
        "payments planned": len(workload.plan.payments),
        "posts": j.counts,
        "events accepted": j.accepted_events,
        "jobs accepted": report.jobs,
        "jobs by status": report.by_status,
        "customers paying": f"{len(workload.pays)} tries, {pays_allowed} allowed",
        "503 retries by the workload": workload.retries_503,
        "nemesis strikes": nemesis.counts(),
        "iamport faults injected": sandbox_stats.get("faults_injected", {}),
        "iamport calls": sandbox_stats.get("calls", {}),
        "jobs by account": f.jobs_by_account,
        "iamport calls by merchant": {
            m: v.get("calls") for m, v in sandbox_stats.get("by_merchant", {}).items()
        },
        "tokens seen": n_tokens,
        "workers restarted after dying on their own": len(f.worker_crashes),
        "workload seconds": round(workload_seconds, 1),
        "time to drain seconds": round(drain_seconds, 1),
        "drained": drained,
        **(hooks.figures if hooks else {}),
        **(
            {
                "admin changes by action": rec.admin_changes,
                "batch lookups (reconciliation)": rec.batch_lookups,
                "jobs moved by reconciliation": rec.moves,
                "drifts recorded (jobs, by kind)": rec.report.drifts,
                "settled as someone else's": rec.report.upstream,
                "changed jobs settled before the final round": rec.settled,
            }
            if rec
            else {}
        ),
        **_v2_figures(report),
    }
    violations: dict[str, Any] = {
        "not drained (non-terminal jobs)": report.non_terminal,
        "lost (accepted imp_uids without a job)": f.lost_imp_uids,
        "lost (accepted events missing or incomplete)": f.lost_events,
        "wrong outcome": report.wrong_outcome,
        "applied cancels or refunds per imp_uid over 1": max(0, report.applied_max - 1),
        "applied refunds per imp_uid over 1": max(0, report.refunds_max - 1),
        "calls sent while an earlier one could still apply": report.overlapping_cancels,
        "calls after one applied": report.cancel_after_applied,
        # A call with another account's credentials, or without or with the wrong Tier.
        "calls speaking for another merchant or Tier": sum(
            int(v.get("not_its_payment", 0)) for v in sandbox_stats.get("by_merchant", {}).values()
        ),
        "refunds without a lookup just before": report.refunds_without_lookup,
        "refunds nobody asked for (hold without a person)": report.refunds_unasked,
        "cancel or refund calls without an attempt record": f.unrecorded_cancels,
        "unexpected API statuses": j.unexpected_statuses,
        "wrong event bodies": j.wrong_bodies,
        "jobs from conflicting bodies": f.conflict_jobs,
        "events changed by a conflict": f.conflict_changed,
        "paid after the job was accepted": j.paid_after_accepted,
        "secrets in logs": f.secrets_in_logs,
        "dead processes": f.dead_processes,
        "workers that died on their own": [] if TOLERATE_WORKER_CRASHES else f.worker_crashes,
        "nemesis errors": f.nemesis_errors,
        **(hooks.violations if hooks else {}),
        **(
            {
                "jobs not where the gateway says": rec.report.not_where,
                "drifts recorded more than once": rec.report.drift_twice,
            }
            if rec
            else {}
        ),
        **_v2_violations(report),
    }
    _say("")
    _say("== chaos figures ==")
    for name, value in figures.items():
        _say(f"{name:32} {value}")
    _say(f"{'applied cancels per imp_uid (max)':32} {report.applied_max}")
    _say("== violations (all must be 0) ==")
    total = 0
    for name, value in violations.items():
        n = len(value) if isinstance(value, list) else int(value)
        total += n
        sample = f"  e.g. {value[:5]}" if isinstance(value, list) and value else ""
        _say(f"{name:45} {n}{sample}")
    _say(f"strikes: {[(s.at, s.kind, s.seconds) for s in nemesis.strikes]}")
    _say(f"RESULT: {'PASS' if total == 0 else 'FAIL'} ({total} violations)")
    if json_out is not None:
        json_out.write_text(
            json.dumps(
                {
                    "figures": figures,
                    "violations": violations,
                    "applied_max": report.applied_max,
                    "total": total,
                },
                default=str,
                indent=2,
            )
        )
    return total == 0


def _v2_figures(report: Report) -> dict[str, Any]:
    """What PortOne V2 saw: its mutating calls, replays of a key's answer, answers of "still
    outstanding", REQUESTED cancellations, and reused keys it refused."""
    v2 = report.v2
    if v2 is None:
        return {}
    return {
        "v2 jobs": v2.jobs,
        "v2 jobs by status": v2.by_status,
        "v2 calls": v2.calls,
        "v2 faults injected": v2.faults_injected,
        "v2 mutating calls": v2.mutating_calls,
        "v2 answers replayed from a key": v2.replays,
        "v2 answers still outstanding": v2.outstanding,
        "v2 refunds answered REQUESTED": v2.refunds_requested,
        "v2 calls arriving while one was worked on": v2.overlaps,
        "v2 keys refused as reused": v2.refused_as_reused,
    }


def _v2_violations(report: Report) -> dict[str, Any]:
    """PortOne V2's lines: each payment refunded and closed at most once, every mutating call
    under a key, and no key sent for two different calls (method, path, body or payment)."""
    v2 = report.v2
    if v2 is None:
        return {}
    return {
        "v2 refunds applied per payment over 1": max(0, v2.refunds_max - 1),
        "v2 closes applied per payment over 1": max(0, v2.closes_max - 1),
        "v2 mutating requests without an Idempotency-Key": v2.without_key,
        "v2 keys reused for a different call": v2.keys_reused,
    }


if __name__ == "__main__":
    sys.exit(main())
