"""`stockout demo`: the service's whole story, live, against a running `stockout dev`.

Barcodes cancelled; a paid one held and then refunded; an iamport outage with retries, during
which a customer is blocked at the till, and the recovery; on a PortOne V2 account, a virtual
account closed and a paid payment refunded; a signed webhook received and verified. Each step
reports ok, failed, or skipped when the API (or the stack) does not offer it.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from app.jobs.status import WAITING, JobStatus
from devtools.dev import read_env_file
from devtools.sandbox.control import SandboxControl

console = Console()
TERMINAL = {s.value for s in JobStatus if s not in WAITING}
WEBHOOK_TYPES = ["job.cancelled", "job.needs_refund", "job.refunded", "job.failed"]


class Skipped(Exception):
    """The API does not offer what this step needs."""


class StepFailed(Exception):
    """The step ran and the service did not do what it should."""


@dataclass
class Outcome:
    step: str
    result: str  # ok | failed | skipped
    detail: str
    seconds: float


@dataclass
class Receiver:
    """A local webhook endpoint; keeps every request it gets."""

    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/stockout"

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class Demo:
    """The steps, sharing one API client, one sandbox client and one webhook receiver."""

    def __init__(self, env: dict[str, str]) -> None:
        self.api_url = env["API_URL"]
        self.api = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {env['API_KEY']}"},
            timeout=30,
        )
        self.sandbox = SandboxControl(env["SANDBOX"])
        token = env.get("IAMPORT_WEBHOOK_TOKEN", "")
        hooks = f"{self.api_url}/v1/iamport"
        # The barcode's URLs, as a shop's backend would pass them when issuing it.
        self.payment_urls = (
            {
                "confirm_url": f"{hooks}/cvs-confirm?token={token}",
                "notice_url": f"{hooks}/notifications?token={token}",
            }
            if token
            else {}
        )
        self.run_id = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
        self.v2_account = env.get("V2_ACCOUNT", "")
        self.receiver = Receiver()
        self.webhook_secret: str | None = None
        self.endpoint_id: str | None = None
        self.till = ""  # what the customer at the till met, during the outage
        self.job_ids: set[str] = set()
        self.outcomes: list[Outcome] = []

    def close(self) -> None:
        if self.endpoint_id is not None:
            # The receiver dies with this process: leave no endpoint behind to retry into.
            with contextlib.suppress(httpx.HTTPError):
                self.api.delete(f"/v1/webhook-endpoints/{self.endpoint_id}")
        self.receiver.stop()
        self.api.close()
        self.sandbox.close()

    # -- helpers ---------------------------------------------------------------------------

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        response = self.api.request(method, path, **kw)
        if response.status_code in (404, 405) and _route_missing(response):
            raise Skipped(f"{method} {_generic(path)} is not available")
        if response.status_code >= 400:
            raise StepFailed(f"{method} {path} answered {response.status_code}: {response.text}")
        return response

    def payments(self, n: int, tag: str, **spec: Any) -> list[str]:
        uids = [f"imps_demo_{self.run_id}_{tag}{i}" for i in range(1, n + 1)]
        self.sandbox.create_payments(
            [{"imp_uid": u, "amount": 12000, **self.payment_urls, **spec} for u in uids]
        )
        return uids

    def event(self, tag: str, uids: list[str]) -> list[dict[str, Any]]:
        body = {
            "event_id": f"demo-{self.run_id}-{tag}",
            "sku": "SKU-DEMO",
            "payments": [{"imp_uid": u, "merchant_uid": f"order-{u[-6:]}"} for u in uids],
        }
        jobs: list[dict[str, Any]] = self.call("POST", "/v1/stockout-events", json=body).json()[
            "jobs"
        ]
        self.job_ids |= {j["id"] for j in jobs}
        return jobs

    def wait(
        self,
        job_ids: list[str],
        done: Callable[[list[dict[str, Any]]], bool],
        what: str,
        timeout: float = 90,
    ) -> list[dict[str, Any]]:
        """Poll the jobs, showing their statuses, until `done` says so."""
        deadline = time.monotonic() + timeout
        with console.status(what) as status:
            while True:
                jobs = [self.call("GET", f"/v1/jobs/{j}").json() for j in job_ids]
                summary = ", ".join(f"{_payment_id(j)[-3:]}: {j['status']}" for j in jobs)
                status.update(f"{what}  [dim]{summary}[/]")
                if done(jobs):
                    return jobs
                if time.monotonic() > deadline:
                    raise StepFailed(f"{what}: still {summary} after {timeout:.0f}s")
                time.sleep(0.3)

    # -- steps -----------------------------------------------------------------------------

    def webhook_endpoint(self) -> str:
        self.receiver.start()
        body = {
            "url": self.receiver.url,
            "event_types": WEBHOOK_TYPES,
            "description": "stockout demo",
        }
        response = self.call("POST", "/v1/webhook-endpoints", json=body)
        self.webhook_secret = response.json()["secret"]
        self.endpoint_id = str(response.json()["id"])
        return f"endpoint {self.endpoint_id} -> {self.receiver.url}"

    def cancel_barcodes(self) -> str:
        jobs = self.event("cancel", self.payments(3, "c"))
        done = self.wait(
            [j["id"] for j in jobs],
            lambda js: all(j["status"] in TERMINAL for j in js),
            "cancelling 3 barcodes",
        )
        statuses = {j["status"] for j in done}
        if statuses != {"cancelled"}:
            raise StepFailed(f"expected every job cancelled, got {sorted(statuses)}")
        return f"{len(done)} barcodes cancelled at iamport (sandbox)"

    def hold_and_refund(self) -> str:
        (uid,) = self.payments(1, "p", status="paid")
        (job,) = self.event("paid", [uid])
        (held,) = self.wait(
            [job["id"]], lambda js: js[0]["status"] in TERMINAL, "a paid barcode: holding"
        )
        if held["status"] != JobStatus.NEEDS_REFUND:
            raise StepFailed(f"a paid payment ended {held['status']}, not needs_refund")
        console.print(f"  {uid} was paid already: [yellow]needs_refund[/] (a person decides)")
        self.call("POST", f"/v1/jobs/{job['id']}/refund")
        (refunded,) = self.wait(
            [job["id"]],
            lambda js: js[0]["status"] == JobStatus.REFUNDED,
            "refunding after the decision",
        )
        return f"held as needs_refund, then refunded ({refunded['refund']['amount']:,.0f} won)"

    def outage(self) -> str:
        self.sandbox.set_faults(error_rate=1.0, calls=["cancel", "lookup"])
        try:
            uids = self.payments(2, "o")
            jobs = self.event("outage", uids)
            ids = [j["id"] for j in jobs]
            self.wait(
                ids,
                lambda js: all(
                    j["attempts"] >= 2 or j["status"] == JobStatus.RETRY_WAIT for j in js
                ),
                "iamport answers 500 to everything: retrying",
                timeout=60,
            )
            paid = self.sandbox.pay(uids[0])
            till = (
                "blocked at the till (confirm hook 409)"
                if paid["confirm_status"] == 409 and not paid["allowed"]
                else f"NOT blocked at the till ({paid})"
            )
            console.print(f"  during the outage a customer tries to pay {uids[0]}: {till}")
            if paid["allowed"]:
                raise StepFailed(f"the customer could pay a barcode being cancelled: {paid}")
        finally:
            self.sandbox.clear_faults()
        done = self.wait(
            ids,
            lambda js: all(j["status"] in TERMINAL for j in js),
            "iamport is back: recovering",
            timeout=180,
        )
        if {j["status"] for j in done} != {"cancelled"}:
            raise StepFailed(f"after the outage: {[j['status'] for j in done]}")
        attempts = sum(j["attempts"] for j in done)
        self.till = till
        return f"{len(done)} jobs retried ({attempts} attempts in all) and cancelled"

    def v2_event(self, tag: str, payment_id: str, hint: str, **extra: Any) -> dict[str, Any]:
        if not self.v2_account:
            raise Skipped("this stack has no PortOne V2 account (stockout dev makes one)")
        body = {
            "account": self.v2_account,
            "event_id": f"demo-{self.run_id}-{tag}",
            "sku": "SKU-DEMO",
            "payments": [{"payment_id": payment_id, "pay_method": hint}],
            **extra,
        }
        (job,) = self.call("POST", "/v1/stockout-events", json=body).json()["jobs"]
        return dict(job)

    def v2_close(self) -> str:
        payment_id = f"demo-{self.run_id}-v2-vbank"
        if self.v2_account:
            self.sandbox.v2.create_payment(
                payment_id=payment_id, method="virtual_account", amount=12000
            )
        job = self.v2_event("v2-close", payment_id, "vbank")
        (done,) = self.wait(
            [job["id"]], lambda js: js[0]["status"] in TERMINAL, "closing a V2 virtual account"
        )
        if done["status"] != JobStatus.CANCELLED:
            raise StepFailed(f"the virtual account's job ended {done['status']}, not cancelled")
        closes = self.sandbox.v2.tally(payment_id)["closes_applied"]
        return f"{payment_id} closed at PortOne V2 (sandbox), {closes} close applied"

    def v2_refund(self) -> str:
        payment_id = f"demo-{self.run_id}-v2-card"
        if self.v2_account:
            self.sandbox.v2.create_payment(payment_id=payment_id, method="card", amount=12000)
        job = self.v2_event("v2-refund", payment_id, "cvs", on_paid="refund")
        (done,) = self.wait(
            [job["id"]], lambda js: js[0]["status"] in TERMINAL, "refunding a V2 payment"
        )
        if done["status"] != JobStatus.REFUNDED:
            raise StepFailed(f"the paid V2 payment's job ended {done['status']}, not refunded")
        tally = self.sandbox.v2.tally(payment_id)
        return (
            f"{payment_id} refunded ({done['refund']['amount']:,.0f} won), "
            f"{tally['refunds_applied']} refund applied, every call under an Idempotency-Key"
        )

    def till_guard(self) -> str:
        till = self.till
        if not till:
            raise Skipped("the outage step did not run")
        if "NOT" in till:
            raise StepFailed(till)
        return till

    def webhooks(self) -> str:
        if self.webhook_secret is None:
            raise Skipped("no webhook endpoint was registered")
        try:
            from standardwebhooks import Webhook
        except ImportError:
            raise StepFailed(
                "the verifier is missing: pip install -r requirements-dev.lock"
            ) from None

        verifier = Webhook(self.webhook_secret)
        deadline = time.monotonic() + 60
        with console.status("waiting for signed webhooks"):
            while time.monotonic() < deadline:
                ours = [
                    (h, b)
                    for h, b in list(self.receiver.received)
                    if json.loads(b).get("data", {}).get("id") in self.job_ids
                ]
                if len(ours) >= len(self.job_ids):
                    break
                time.sleep(0.3)
        if not ours:
            raise StepFailed("no webhook arrived within 60s")
        for headers, body in ours:
            verifier.verify(body, headers)  # raises on a bad signature
        types = sorted({json.loads(b)["type"] for _, b in ours})
        return f"{len(ours)} messages received, every signature verified ({', '.join(types)})"

    def run(self) -> list[Outcome]:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("webhook endpoint registered", self.webhook_endpoint),
            ("barcodes cancelled", self.cancel_barcodes),
            ("paid: held, then refunded", self.hold_and_refund),
            ("iamport outage: retries, recovery", self.outage),
            ("customer blocked at the till", self.till_guard),
            ("PortOne V2: virtual account closed", self.v2_close),
            ("PortOne V2: paid, refunded", self.v2_refund),
            ("webhooks delivered and verified", self.webhooks),
        ]
        for name, step in steps:
            console.rule(f"[bold]{name}")
            started = time.monotonic()
            try:
                result, detail = "ok", step()
            except Skipped as exc:
                result, detail = "skipped", f"(not available) {exc}"
            except (StepFailed, httpx.HTTPError, ValueError) as exc:
                result, detail = "failed", str(exc)[:300]
            color = {"ok": "green", "skipped": "yellow", "failed": "red"}[result]
            console.print(f"[{color}]{result}[/]  {detail}", highlight=False)
            self.outcomes.append(Outcome(name, result, detail, time.monotonic() - started))
        return self.outcomes


def _payment_id(job: dict[str, Any]) -> str:
    """A job's payment id (an API older than V2 accounts shows only imp_uid)."""
    return str(job.get("payment_id") or job.get("imp_uid") or "")


def _generic(path: str) -> str:
    """The path as documented: ids as {id}, no query."""
    return re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "{id}", path.split("?")[0])


def _route_missing(response: httpx.Response) -> bool:
    """A 404/405 from the router itself (no such endpoint), not a missing resource."""
    try:
        detail = response.json().get("detail", "")
    except ValueError:
        return True
    return detail in ("Not Found", "Method Not Allowed")


def summary(outcomes: list[Outcome]) -> Table:
    table = Table(title="stockout demo")
    table.add_column("step", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("s", justify="right")
    table.add_column("what happened", overflow="fold")
    for o in outcomes:
        color = {"ok": "green", "skipped": "yellow", "failed": "red"}[o.result]
        table.add_row(o.step, f"[{color}]{o.result}[/]", f"{o.seconds:.1f}", o.detail)
    return table


@contextmanager
def _demo(env: dict[str, str]) -> Iterator[Demo]:
    demo = Demo(env)
    try:
        yield demo
    finally:
        demo.close()


def run_demo(env_file: Path) -> int:
    """Run every step; 0 when none failed."""
    env = read_env_file(env_file)
    missing = [k for k in ("API_URL", "API_KEY") if not env.get(k)]
    if missing:
        raise RuntimeError(f"{env_file} lacks {', '.join(missing)}: start `stockout dev` first")
    if not env.get("SANDBOX"):
        raise RuntimeError(
            "the demo runs against the iamport sandbox; this stack uses the real one"
        )
    try:
        httpx.get(f"{env['API_URL']}/readyz", timeout=5).raise_for_status()
    except httpx.HTTPError:
        raise RuntimeError(
            f"the API at {env['API_URL']} is not up: start `stockout dev` first"
        ) from None
    console.print(f"[bold]stockout demo[/] against {env['API_URL']} (sandbox {env['SANDBOX']})")
    with _demo(env) as demo:
        outcomes = demo.run()
    console.print(summary(outcomes))
    return 1 if any(o.result == "failed" for o in outcomes) else 0
