"""The sandbox's merchant accounts over HTTP: each sees only its own payments, a sub-merchant
only with its Tier, and faults, stats and the call log are per merchant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.upstream.iamport import IamportClient
from app.upstream.iamport.token import key_id as service_key_id
from devtools.sandbox.control import SandboxControl
from devtools.sandbox.merchants import key_id, merchant_id, parse_merchant
from tests.support.sandbox import IMP_KEY, IMP_SECRET, running_sandbox

A_KEY, A_SECRET = "merchant_a_key", "merchant_a_secret"
AGENCY_KEY, AGENCY_SECRET = "agency_key", "agency_secret"
UNKNOWN = "imps_000000000000"


@pytest.fixture
def http(sandbox_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox_url, timeout=10) as client:
        yield client


@pytest.fixture
def accounts(sandbox: SandboxControl) -> SandboxControl:
    """The default merchant, merchant A, and an agency with the sub-merchants ABC and DEF."""
    sandbox.add_merchants(
        [
            {"imp_key": A_KEY, "imp_secret": A_SECRET},
            {"imp_key": AGENCY_KEY, "imp_secret": AGENCY_SECRET, "tier": "ABC"},
            {"imp_key": AGENCY_KEY, "imp_secret": AGENCY_SECRET, "tier": "DEF"},
        ]
    )
    return sandbox


def get_token(
    http: httpx.Client, imp_key: str, imp_secret: str, tier: str | None = None
) -> httpx.Response:
    headers = {"Tier": tier} if tier else {}
    body = {"imp_key": imp_key, "imp_secret": imp_secret}
    return http.post("/users/getToken", json=body, headers=headers)


def auth(http: httpx.Client, imp_key: str, imp_secret: str, tier: str | None = None) -> Any:
    """Headers for the calls of one merchant: its token, and its Tier if it has one."""
    answer = get_token(http, imp_key, imp_secret, tier)
    assert answer.status_code == 200, answer.text
    headers = {"Authorization": f"Bearer {answer.json()['response']['access_token']}"}
    return {**headers, "Tier": tier} if tier else headers


def not_found(answer: httpx.Response, status: int = 404) -> bool:
    body = answer.json()
    return answer.status_code == status and body["code"] == -1 and body["response"] is None


# -- accounts --------------------------------------------------------------------------------


def test_merchants_are_added_listed_checked_and_reset(accounts: SandboxControl) -> None:
    listed = accounts.merchants()
    assert [(m["imp_key"], m["tier"], m["default"]) for m in listed] == [
        (IMP_KEY, None, True),
        (A_KEY, None, False),
        (AGENCY_KEY, "ABC", False),
        (AGENCY_KEY, "DEF", False),
    ]
    assert listed[2]["id"] == f"{key_id(AGENCY_KEY)}/ABC" == merchant_id(AGENCY_KEY, "ABC")
    assert all("imp_secret" not in m and m["faults"] is None for m in listed)
    again = accounts.add_merchant(A_KEY, A_SECRET)  # the same account again changes nothing
    assert again["id"] == listed[1]["id"] and len(accounts.merchants()) == 4
    for bad in (
        {"imp_key": AGENCY_KEY, "imp_secret": "another", "tier": "GHI"},  # one secret per agency
        {"imp_key": "k", "imp_secret": "s", "tier": "ab1"},
        {"imp_key": "k", "imp_secret": "s", "tier": "ABCD"},
        {"imp_key": "", "imp_secret": "s"},
        {"imp_key": "k"},
        {"imp_key": "k", "imp_secret": "s", "name": "x"},
    ):
        with pytest.raises(httpx.HTTPStatusError) as info:
            accounts.add_merchants([{"imp_key": "fine", "imp_secret": "fine"}, bad])
        assert info.value.response.status_code == 400
    assert "fine" not in {m["imp_key"] for m in accounts.merchants()}  # all or nothing
    for spec in ({"imp_key": "nobody"}, {"imp_key": AGENCY_KEY}, {"tier": "ABC"}):
        with pytest.raises(httpx.HTTPStatusError):
            accounts.create_payment(**spec)  # an account the sandbox does not know
    owned = accounts.create_payment(imp_key=AGENCY_KEY, tier="ABC")
    assert owned["merchant"] == merchant_id(AGENCY_KEY, "ABC")
    assert accounts.create_payment()["merchant"] == merchant_id(IMP_KEY)
    accounts.reset()
    assert [m["imp_key"] for m in accounts.merchants()] == [IMP_KEY]


def test_merchants_given_at_start_outlive_a_reset() -> None:
    assert parse_merchant("k:s:T01").tier == "T01" and parse_merchant("k:s").tier is None
    for bad in ("k", "k:s:t:x", "k:s:ab", ":s"):
        with pytest.raises(ValueError):
            parse_merchant(bad)
    with (
        running_sandbox(
            merchants=[f"{A_KEY}:{A_SECRET}", f"{AGENCY_KEY}:{AGENCY_SECRET}:ABC"]
        ) as url,
        SandboxControl(url) as control,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        control.reset()
        assert [(m["imp_key"], m["tier"]) for m in control.merchants()] == [
            (IMP_KEY, None),
            (A_KEY, None),
            (AGENCY_KEY, "ABC"),
        ]
        uid = control.create_payment(imp_key=AGENCY_KEY, tier="ABC")["imp_uid"]
        headers = auth(http, AGENCY_KEY, AGENCY_SECRET, "ABC")
        assert http.get(f"/payments/{uid}", headers=headers).status_code == 200


# -- tokens ----------------------------------------------------------------------------------


def test_one_token_per_key_and_a_tier_the_agency_lacks_is_refused(
    accounts: SandboxControl, http: httpx.Client
) -> None:
    def token(answer: httpx.Response) -> str:
        assert answer.status_code == 200, answer.text
        return str(answer.json()["response"]["access_token"])

    default = token(get_token(http, IMP_KEY, IMP_SECRET))
    a = token(get_token(http, A_KEY, A_SECRET))
    agency = token(get_token(http, AGENCY_KEY, AGENCY_SECRET))
    assert len({default, a, agency}) == 3
    # The token names the credentials; every tier of the agency shares it.
    assert token(get_token(http, AGENCY_KEY, AGENCY_SECRET, "ABC")) == agency
    assert token(get_token(http, AGENCY_KEY, AGENCY_SECRET, "DEF")) == agency
    for refused in (
        get_token(http, AGENCY_KEY, AGENCY_SECRET, "XYZ"),
        get_token(http, AGENCY_KEY, AGENCY_SECRET, "abc"),
        get_token(http, A_KEY, A_SECRET, "ABC"),  # A is no agency
        get_token(http, A_KEY, AGENCY_SECRET),
        get_token(http, AGENCY_KEY, A_SECRET, "ABC"),
    ):
        assert not_found(refused, 401)
    accounts.expire_tokens(A_KEY)  # only A's token stops working
    uid = accounts.create_payment()["imp_uid"]
    assert http.get(f"/payments/{uid}", headers={"Authorization": default}).status_code == 200
    assert http.get(f"/payments/{uid}", headers={"Authorization": a}).status_code == 401
    assert token(get_token(http, A_KEY, A_SECRET)) != a


# -- whose payment ---------------------------------------------------------------------------


def test_a_token_of_one_merchant_cannot_see_or_cancel_anothers_payment(
    accounts: SandboxControl, http: httpx.Client
) -> None:
    accounts.set_faults(refusal_style="http")
    mine, theirs, paid = (
        p["imp_uid"]
        for p in accounts.create_payments(
            [{"imp_key": A_KEY}, {}, {"status": "paid", "amount": 700}]
        )
    )
    a = auth(http, A_KEY, A_SECRET)
    unknown = http.get(f"/payments/{UNKNOWN}", headers=a)
    looked = http.get(f"/payments/{theirs}", headers=a)
    # Indistinguishable from an imp_uid that does not exist: nothing says it is someone else's.
    assert not_found(looked) and looked.json() == unknown.json()
    assert not_found(http.delete(f"/cvs/{theirs}", headers=a))
    vbank = accounts.create_payment(pay_method="vbank")["imp_uid"]
    assert not_found(http.delete(f"/vbanks/{vbank}", headers=a))
    refund = {"imp_uid": paid, "checksum": 700, "reason": "stock-out"}
    assert not_found(http.post("/payments/cancel", json=refund, headers=a), 200)
    by_order = {"merchant_uid": f"order-{paid}", "checksum": 700}
    assert not_found(http.post("/payments/cancel", json=by_order, headers=a), 200)
    for uid, status in ((theirs, "ready"), (paid, "paid"), (vbank, "ready")):
        truth = accounts.payment(uid)
        assert truth["status"] == status and truth["mutating_applied"] == 0
    # Its own payment, and the default merchant's own, are served as usual.
    assert http.get(f"/payments/{mine}", headers=a).json()["response"]["status"] == "ready"
    assert http.delete(f"/cvs/{mine}", headers=a).json()["response"]["status"] == "cancelled"
    default = auth(http, IMP_KEY, IMP_SECRET)
    assert not_found(http.get(f"/payments/{mine}", headers=default))
    refunded = http.post("/payments/cancel", json=refund, headers=default).json()
    assert refunded["code"] == 0 and refunded["response"]["status"] == "cancelled"
    by_merchant = accounts.stats()["by_merchant"]
    mine_stats, default_stats = by_merchant[merchant_id(A_KEY)], by_merchant[merchant_id(IMP_KEY)]
    # Four named another's imp_uid; A's merchant_uid named nothing of A's, so nobody's.
    assert mine_stats["not_its_payment"] == 4 and mine_stats["cancels_applied"] == 1
    assert mine_stats["refunds_applied"] == 0 and mine_stats["payments"] == 1
    assert default_stats["refunds_applied"] == 1 and default_stats["not_its_payment"] == 1
    assert default_stats["payments"] == 3 and default_stats["cancels_applied"] == 0


def test_a_merchant_uid_is_the_merchants_own(accounts: SandboxControl, http: httpx.Client) -> None:
    specs: list[dict[str, Any]] = [
        {"merchant_uid": "order-1", "status": "paid", "amount": 100},
        {"merchant_uid": "order-1", "status": "paid", "amount": 200, "imp_key": A_KEY},
    ]
    default_uid, a_uid = (p["imp_uid"] for p in accounts.create_payments(specs))
    body = {"merchant_uid": "order-1", "checksum": 200}
    answer = http.post("/payments/cancel", json=body, headers=auth(http, A_KEY, A_SECRET)).json()
    assert answer["code"] == 0 and answer["response"]["imp_uid"] == a_uid
    assert accounts.payment(default_uid)["status"] == "paid"


def test_a_sub_merchants_payment_needs_its_own_tier_on_every_call(
    accounts: SandboxControl, http: httpx.Client
) -> None:
    accounts.set_faults(refusal_style="http")
    abc = accounts.create_payment(imp_key=AGENCY_KEY, tier="ABC")["imp_uid"]
    paid = accounts.create_payment(imp_key=AGENCY_KEY, tier="ABC", status="paid", amount=900)
    with_abc = auth(http, AGENCY_KEY, AGENCY_SECRET, "ABC")
    bearer = {"Authorization": with_abc["Authorization"]}
    wrong_tiers: list[dict[str, str]] = [
        bearer,  # no Tier at all
        {**bearer, "Tier": "DEF"},  # another sub-merchant of the same agency
        {**bearer, "Tier": "XYZ"},  # a Tier the agency does not have
        {**bearer, "Tier": "abc"},
        {**bearer, "Tier": ""},
    ]
    refund = {"imp_uid": paid["imp_uid"], "checksum": 900}
    for headers in wrong_tiers:
        assert not_found(http.get(f"/payments/{abc}", headers=headers))
        assert not_found(http.delete(f"/cvs/{abc}", headers=headers))
        assert not_found(http.post("/payments/cancel", json=refund, headers=headers), 200)
    # A token of another account with the right Tier is no better.
    other = {**auth(http, A_KEY, A_SECRET), "Tier": "ABC"}
    assert not_found(http.delete(f"/cvs/{abc}", headers=other))
    assert accounts.payment(abc)["mutating_applied"] == 0
    assert http.get(f"/payments/{abc}", headers=with_abc).json()["response"]["status"] == "ready"
    assert http.delete(f"/cvs/{abc}", headers=with_abc).json()["response"]["status"] == "cancelled"
    assert http.post("/payments/cancel", json=refund, headers=with_abc).json()["code"] == 0
    # Issuing speaks as the caller's merchant too; a Tier the agency lacks issues nothing.
    issue = {"merchant_uid": "def-1", "amount": 1000}
    with_def = {**bearer, "Tier": "DEF"}
    issued = http.post("/cvs", json=issue, headers=with_def).json()["response"]
    assert accounts.payment(issued["imp_uid"])["merchant"] == merchant_id(AGENCY_KEY, "DEF")
    assert not_found(http.post("/cvs", json=issue, headers={**bearer, "Tier": "XYZ"}), 401)
    stats = accounts.stats()["by_merchant"][merchant_id(AGENCY_KEY, "ABC")]
    assert stats["cancels_applied"] == 1 and stats["refunds_applied"] == 1


# -- faults per merchant ---------------------------------------------------------------------


def test_a_429_storm_on_one_merchant_while_the_others_are_served(
    accounts: SandboxControl, http: httpx.Client
) -> None:
    a_uid = accounts.create_payment(imp_key=A_KEY)["imp_uid"]
    abc_uid = accounts.create_payment(imp_key=AGENCY_KEY, tier="ABC")["imp_uid"]
    default_uid = accounts.create_payment()["imp_uid"]
    a = auth(http, A_KEY, A_SECRET)
    abc = auth(http, AGENCY_KEY, AGENCY_SECRET, "ABC")
    default = auth(http, IMP_KEY, IMP_SECRET)
    scoped = accounts.set_faults(rate_429=1.0, retry_after=2, imp_key=A_KEY)
    assert scoped["rate_429"] == 1.0 and accounts.faults()["rate_429"] == 0.0
    assert accounts.faults(imp_key=A_KEY)["rate_429"] == 1.0
    assert accounts.faults(imp_key=AGENCY_KEY, tier="ABC")["rate_429"] == 0.0
    storm = [
        get_token(http, A_KEY, A_SECRET),
        *(http.get(f"/payments/{a_uid}", headers=a) for _ in range(5)),
        http.delete(f"/cvs/{a_uid}", headers=a),
    ]
    assert all(r.status_code == 429 and r.headers["retry-after"] == "2" for r in storm)
    assert all(r.json()["code"] == -1 for r in storm)
    for _ in range(5):
        assert http.get(f"/payments/{default_uid}", headers=default).status_code == 200
        assert http.get(f"/payments/{abc_uid}", headers=abc).status_code == 200
    assert accounts.payment(a_uid)["status"] == "ready"
    listed = {m["id"]: m for m in accounts.merchants()}
    assert listed[merchant_id(A_KEY)]["faults"] is not None
    assert listed[merchant_id(IMP_KEY)]["faults"] is None
    by_merchant = accounts.stats()["by_merchant"]
    assert by_merchant[merchant_id(A_KEY)]["faults_injected"] == {"429": 7}
    assert by_merchant[merchant_id(IMP_KEY)]["faults_injected"] == {}
    accounts.clear_faults(imp_key=A_KEY)  # A follows the unscoped faults again
    assert http.get(f"/payments/{a_uid}", headers=a).status_code == 200
    accounts.set_faults(rate_429=1.0, imp_key=A_KEY)
    accounts.clear_faults()  # everyone's, as before merchants had their own
    assert http.get(f"/payments/{a_uid}", headers=a).status_code == 200
    for bad in ({"imp_key": "nobody"}, {"tier": "ABC"}, {"imp_key": AGENCY_KEY, "tier": "XYZ"}):
        with pytest.raises(httpx.HTTPStatusError):
            accounts.set_faults(rate_429=1.0, **bad)


def test_a_401_storm_and_an_outage_scoped_to_one_merchant_each(
    accounts: SandboxControl, http: httpx.Client
) -> None:
    a_uid = accounts.create_payment(imp_key=A_KEY)["imp_uid"]
    abc_uid = accounts.create_payment(imp_key=AGENCY_KEY, tier="ABC")["imp_uid"]
    def_uid = accounts.create_payment(imp_key=AGENCY_KEY, tier="DEF")["imp_uid"]
    default_uid = accounts.create_payment()["imp_uid"]
    default = auth(http, IMP_KEY, IMP_SECRET)
    defs = auth(http, AGENCY_KEY, AGENCY_SECRET, "DEF")
    accounts.set_faults(token_expiry_rate=1.0, imp_key=A_KEY)
    accounts.set_faults(error_rate=1.0, error_style="json", imp_key=AGENCY_KEY, tier="ABC")
    for _ in range(3):
        # Each of A's calls finds its fresh token expired; getToken itself still answers.
        a = auth(http, A_KEY, A_SECRET)
        assert http.get(f"/payments/{a_uid}", headers=a).status_code == 401
        outage = http.get(f"/payments/{abc_uid}", headers={**defs, "Tier": "ABC"})
        assert outage.status_code == 500 and outage.json()["code"] == -1
        # The default merchant keeps its token; DEF shares the agency's and is served.
        assert http.get(f"/payments/{default_uid}", headers=default).status_code == 200
        assert http.get(f"/payments/{def_uid}", headers=defs).status_code == 200


# -- the call log ----------------------------------------------------------------------------


def test_every_call_of_the_tiered_account_carries_its_tier_in_the_log(
    accounts: SandboxControl, sandbox_url: str
) -> None:
    abc = accounts.create_payment(imp_key=AGENCY_KEY, tier="ABC")["imp_uid"]
    own = accounts.create_payment()["imp_uid"]
    since = len(accounts.calls())
    tiered = IamportClient(
        base_url=sandbox_url,
        imp_key=AGENCY_KEY,
        imp_secret=AGENCY_SECRET,
        timeout=10,
        tier="ABC",
    )
    plain = IamportClient(base_url=sandbox_url, imp_key=IMP_KEY, imp_secret=IMP_SECRET, timeout=10)
    try:
        assert tiered.look_up(abc).status == "ready"
        assert tiered.void_barcode(abc).status == "cancelled"
        assert plain.look_up(own).status == "ready"
    finally:
        tiered.close()
        plain.close()
    calls = accounts.calls(since)
    agency_calls = [c for c in calls if c["key_id"] == key_id(AGENCY_KEY)]
    assert [c["call"] for c in agency_calls] == ["token", "lookup", "cancel"]
    assert all(c["tier"] == "ABC" for c in agency_calls)
    default_calls = [c for c in calls if c["key_id"] == key_id(IMP_KEY)]
    assert [c["call"] for c in default_calls] == ["token", "lookup"]
    assert all(c["tier"] is None for c in default_calls)
    assert len(agency_calls) + len(default_calls) == len(calls)
    # The service names accounts the same way, so its logs and the sandbox's can be matched.
    assert key_id(AGENCY_KEY) == service_key_id(AGENCY_KEY)
    assert all(AGENCY_SECRET not in str(c) and AGENCY_KEY not in str(c) for c in calls)
    assert accounts.stats()["by_merchant"][merchant_id(AGENCY_KEY, "ABC")]["calls"] == 3


def test_the_log_of_calls_without_a_valid_token_or_known_key(
    accounts: SandboxControl, http: httpx.Client
) -> None:
    since = len(accounts.calls())
    get_token(http, "typo_key", "some_secret", "ABC")
    http.get(f"/payments/{UNKNOWN}", headers={"Authorization": "nope", "Tier": "DEF"})
    logged = [(c["key_id"], c["tier"], c["status_code"]) for c in accounts.calls(since)]
    assert logged == [(None, "ABC", 401), (None, "DEF", 401)]
