"""One status table per provider, read alike by the poll (parse_status) and the lookup (parse_lookup).

The contract is `providers.base.Reading`: REFUND -> the refund's status on both; NO_REFUND -> PENDING "not visible
yet" on a poll, None ("absent") on a lookup; UNSURE -> ProviderError(UNSURE) on both; CONTRADICTS ->
NEEDS_ATTENTION on both, never REJECTED. Every answer here is a real response body built with the provider's own
test helpers (Cobo answers signed with the test response key).

The regression tests at the end do not use `status_table`: they check behaviour only, so they also run (and fail
for the behavioural reason) against the adapters before the tables existed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from config.accounts import Account
from providers import cobo, coincorner, coinvoyage, cryptomus, get_adapter
from providers.base import (
    ErrorKind,
    ProviderError,
    Reading,
    RefundSpec,
    RefundStatus,
    Response,
    StatusResult,
    UnmappedStatusError,
)
from tests import test_cobo as t_cobo
from tests import test_coincorner as t_cc
from tests import test_coinvoyage as t_cv
from tests import test_cryptomus as t_cm

# --- documented raw statuses, hard-coded from the specs (shared/providers/*.md) --------------------------------

DOCUMENTED: dict[str, frozenset[str]] = {
    # cobo.md §1 "Refund statuses" (the SDK's refund_status.py)
    "cobo": frozenset(
        {
            "AddressPending",
            "AddressSubmitted",
            "PendingConfirmation",
            "Pending",
            "Processing",
            "Completed",
            "PartiallyCompleted",
            "Failed",
        }
    ),
    # coincorner.md §1 "Status read-back: CheckOrder response" (the OrderStatus table), plus the unknown-order
    # answer in the paragraph under it: `OrderStatusText == "N/A"` with an `Error` field (OpenCart plugin [S6]).
    "coincorner": frozenset({"0", "1", "2", "-1", "-2", "-4", "-5", "-99", "N/A"}),
    # coinvoyage.md §1 "PayOrder statuses"
    "coinvoyage": frozenset(
        {
            "PENDING",
            "AWAITING_PAYMENT",
            "AWAITING_CONFIRMATION",
            "OPTIMISTIC_CONFIRMED",
            "EXECUTING_ORDER",
            "COMPLETED",
            "FAILED",
            "EXPIRED",
            "REFUNDED",
            "PARTIAL_PAYMENT",
        }
    ),
    # cryptomus.md §1 "Statuses relevant to refunds" ([S3] payment-statuses)
    "cryptomus": frozenset(
        {
            "refund_process",
            "refund_paid",
            "refund_fail",
            "paid",
            "paid_over",
            "wrong_amount",
            "process",
            "confirm_check",
            "wrong_amount_waiting",
            "check",
            "fail",
            "cancel",
            "system_fail",
            "locked",
        }
    ),
}

SETTLE_SECONDS = {"cobo": 10, "coincorner": 30, "coinvoyage": 300, "cryptomus": 30}

# --- real answers per provider ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """What a poll and a lookup of one raw status get over the wire, for one provider."""

    spec: RefundSpec
    account: Account
    status_answer: Response
    lookup_answer: Response


def cobo_case(raw: str) -> Case:
    refund = t_cobo.refund(raw, failed_reason="gas")
    return Case(
        dataclasses.replace(t_cobo.spec(), provider_refund_id="R1"),
        t_cobo.make_account(),
        t_cobo.signed_response(refund),  # GET /payments/refunds/{id}
        t_cobo.signed_response({"data": [refund], "pagination": {}}),  # GET /payments/refunds?request_id=
    )


def coincorner_case(raw: str) -> Case:
    if raw == "N/A":  # the unknown-order answer, as the sandbox and the OpenCart plugin have it
        resp = t_cc.answer(200, {"OrderId": None, "OrderStatusText": "N/A", "Error": "Invalid OrderId"})
    else:
        resp = t_cc.check_answer(int(raw))  # OrderStatus is an int on the wire
    return Case(t_cc.make_spec(), t_cc.make_account(), resp, resp)  # CheckOrder answers both


def coinvoyage_case(raw: str) -> Case:
    s = t_cv.spec(refund_id="rf_table")
    order = t_cv.pay_order(raw, metadata={coinvoyage.METADATA_KEY: s.refund_id})
    return Case(
        dataclasses.replace(s, provider_refund_id=order["id"]),
        t_cv.account(),
        t_cv.resp(200, order),  # GET /pay-orders/{id}
        t_cv.resp(200, {"data": [order], "pagination": {}}),  # GET /pay-orders (a short page: a complete scan)
    )


def cryptomus_case(raw: str) -> Case:
    resp = t_cm.info(raw)  # v1/payment/info answers both
    return Case(t_cm.spec(), t_cm.make_account(), resp, resp)


CASES: dict[str, Callable[[str], Case]] = {
    "cobo": cobo_case,
    "coincorner": coincorner_case,
    "coinvoyage": coinvoyage_case,
    "cryptomus": cryptomus_case,
}
UNDOCUMENTED = {"cobo": "Frozen", "coincorner": "-7", "coinvoyage": "ON_HOLD", "cryptomus": "refund_hold"}

Outcome = StatusResult | None | ProviderError


def poll(provider: str, case: Case) -> Outcome:
    try:
        return get_adapter(provider).parse_status(case.spec, case.account, case.status_answer)
    except ProviderError as error:
        return error


def lookup(provider: str, case: Case) -> Outcome:
    try:
        return get_adapter(provider).parse_lookup(case.spec, case.account, case.lookup_answer)
    except ProviderError as error:
        return error


# --- every provider, every raw status in its table --------------------------------------------------------------

# getattr: an adapter without a table yields no rows (test_every_provider_has_table_rows then fails), and the
# module still collects, so the regression tests below can run against adapters from before the tables.
TABLE_ROWS = [
    (provider, raw) for provider in sorted(CASES) for raw in sorted(getattr(get_adapter(provider), "status_table", {}))
]


@pytest.mark.parametrize(("provider", "raw"), TABLE_ROWS)
def test_poll_and_lookup_read_the_table_as_the_contract_says(provider: str, raw: str) -> None:
    entry = get_adapter(provider).status_table[raw]
    case = CASES[provider](raw)
    polled, looked_up = poll(provider, case), lookup(provider, case)
    match entry.reading:
        case Reading.REFUND:
            for result in (polled, looked_up):
                assert isinstance(result, StatusResult), result
                assert (result.status, result.raw_status) == (entry.status, raw)
        case Reading.NO_REFUND:
            assert isinstance(polled, StatusResult), polled
            assert (polled.status, polled.raw_status) == (RefundStatus.PENDING, raw)
            assert polled.reason and polled.reason.startswith("refund not visible yet")
            assert looked_up is None  # the proof of absence
        case Reading.UNSURE:
            for error in (polled, looked_up):
                assert isinstance(error, ProviderError), error
                assert (error.kind, error.raw_status) == (ErrorKind.UNSURE, raw)
        case Reading.CONTRADICTS:
            for result in (polled, looked_up):
                assert isinstance(result, StatusResult), result
                assert (result.status, result.raw_status) == (RefundStatus.NEEDS_ATTENTION, raw)
                assert result.reason


def test_every_provider_has_table_rows() -> None:
    assert {provider for provider, _ in TABLE_ROWS} == set(CASES)


@pytest.mark.parametrize("provider", sorted(DOCUMENTED))
def test_the_table_is_exactly_the_documented_statuses(provider: str) -> None:
    adapter = get_adapter(provider)
    assert set(adapter.status_table) == DOCUMENTED[provider]
    for entry in adapter.status_table.values():
        assert (entry.reading is Reading.REFUND) == (entry.status is not None)


MODULES: dict[str, Any] = {"cobo": cobo, "coincorner": coincorner, "coinvoyage": coinvoyage, "cryptomus": cryptomus}


@pytest.mark.parametrize("provider", sorted(MODULES))
def test_adapters_expose_their_table_and_settle_time(provider: str) -> None:
    adapter, module = get_adapter(provider), MODULES[provider]
    assert adapter.status_table is module.STATUS_TABLE
    assert adapter.settle_seconds == SETTLE_SECONDS[provider]


def test_refund_record_providers_have_refund_entries_only() -> None:
    # Cobo and CoinVoyage answer with refund records only: nothing there can mean "no refund" or "unsure".
    for provider in ("cobo", "coinvoyage"):
        assert {e.reading for e in get_adapter(provider).status_table.values()} == {Reading.REFUND}


@pytest.mark.parametrize("provider", sorted(CASES))
def test_an_undocumented_status_is_unmapped_on_poll_and_lookup(provider: str) -> None:
    raw = UNDOCUMENTED[provider]
    case = CASES[provider](raw)
    for outcome in (poll(provider, case), lookup(provider, case)):
        assert isinstance(outcome, UnmappedStatusError), outcome
        assert (outcome.kind, outcome.raw_status) == (ErrorKind.UNMAPPED, raw)


# --- regressions (behaviour only: no status_table needed) --------------------------------------------------------


def _kind(outcome: Outcome) -> Any:
    if isinstance(outcome, ProviderError):
        return outcome.kind
    if outcome is None:
        return "absent"
    return (outcome.status, outcome.raw_status)


@pytest.mark.parametrize(("provider", "raw"), [(p, raw) for p in sorted(DOCUMENTED) for raw in sorted(DOCUMENTED[p])])
def test_regression_poll_and_lookup_never_disagree(provider: str, raw: str) -> None:
    """(a) Whatever a lookup says, a poll of the same answer says the same; the one documented difference is
    "absent" on a lookup, which a poll reads as PENDING (the refund is late, not gone)."""
    case = CASES[provider](raw)
    polled, looked_up = poll(provider, case), lookup(provider, case)
    if looked_up is None:
        assert isinstance(polled, StatusResult) and polled.status is RefundStatus.PENDING, _kind(polled)
    else:
        assert _kind(polled) == _kind(looked_up)


@pytest.mark.parametrize(("provider", "raw"), [("coincorner", "2"), ("cryptomus", "paid"), ("cryptomus", "paid_over")])
def test_regression_paid_without_refund_is_late_on_a_poll_and_absent_on_a_lookup(provider: str, raw: str) -> None:
    """(a) CoinCorner "2" Complete / Cryptomus "paid": one reading (NO_REFUND) for both reads."""
    case = CASES[provider](raw)
    polled = poll(provider, case)
    assert isinstance(polled, StatusResult)
    assert (polled.status, polled.raw_status) == (RefundStatus.PENDING, raw)
    assert polled.reason and polled.reason.startswith("refund not visible yet")
    assert lookup(provider, case) is None


@pytest.mark.parametrize(
    ("provider", "raw"),
    [("coincorner", raw) for raw in ("0", "1", "-1", "-2", "-99", "N/A")]
    + [("cryptomus", raw) for raw in ("process", "check", "confirm_check", "wrong_amount_waiting")]
    + [("cryptomus", raw) for raw in ("locked", "cancel", "fail", "system_fail", "wrong_amount")],
)
def test_regression_lookup_never_rejects_a_record_state(provider: str, raw: str) -> None:
    """(b) After an ambiguous send, money may have moved: a lookup that reads a record state never ends the
    refund "rejected". It needs attention (CONTRADICTS) or asks again (UNSURE)."""
    outcome = lookup(provider, CASES[provider](raw))
    if isinstance(outcome, ProviderError):
        assert outcome.kind is ErrorKind.UNSURE, outcome
    else:
        assert isinstance(outcome, StatusResult), outcome
        assert outcome.status is RefundStatus.NEEDS_ATTENTION


def test_regression_coinvoyage_duplicates_name_every_other_order() -> None:
    """(c) More than one REFUND pay-order carries our refund id: the first is the result, `others` holds the
    ids of all the others (a double create the worker must see)."""
    s = t_cv.spec(refund_id="rf_dup")
    mine = {"metadata": {coinvoyage.METADATA_KEY: s.refund_id}}
    orders = [
        t_cv.pay_order("COMPLETED", id="po_first", **mine),
        t_cv.pay_order("COMPLETED", id="po_foreign", metadata={coinvoyage.METADATA_KEY: "rf_other"}),
        t_cv.pay_order("EXECUTING_ORDER", id="po_second", **mine),
        t_cv.pay_order("COMPLETED", id="po_deposit", mode="DEPOSIT", **mine),  # not a refund order
        t_cv.pay_order("AWAITING_PAYMENT", id="po_third", **mine),
    ]
    found = coinvoyage.ADAPTER.parse_lookup(s, t_cv.account(), t_cv.resp(200, {"data": orders}))
    assert found is not None
    assert (found.provider_refund_id, found.status) == ("po_first", RefundStatus.COMPLETED)
    assert found.others == ("po_second", "po_third")
    single = coinvoyage.ADAPTER.parse_lookup(s, t_cv.account(), t_cv.resp(200, {"data": orders[:2]}))
    assert single is not None and single.others == ()


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"OrderId": None, "OrderStatusText": "N/A", "Error": "Invalid OrderId"}, ErrorKind.REJECTED),
        ({"Error": "Insufficient balance"}, ErrorKind.REJECTED),
        ({"Error": "Order already refunded"}, ErrorKind.AMBIGUOUS),  # ours, almost surely: look it up
        ({"Error": "Invalid nonce"}, ErrorKind.NONCE),
    ],
)
def test_regression_coincorner_refund_order_2xx_with_an_error_body_is_refused(
    body: dict[str, Any], kind: ErrorKind
) -> None:
    """(d) RefundOrder 200 whose JSON body is CheckOrder's error shape accepted nothing: refused, classified
    like a 400 with that message."""
    resp = t_cc.answer(200, body)
    with pytest.raises(ProviderError) as info:
        coincorner.ADAPTER.parse_submit(t_cc.make_spec(), t_cc.make_account(), resp)
    assert info.value.kind is kind
    assert info.value.http_status == 200


@pytest.mark.parametrize("body", [b"", b'"ok"', b'{"OrderId": "55", "OrderStatus": -4}'])
def test_coincorner_refund_order_2xx_without_an_error_is_accepted(body: bytes) -> None:
    result = coincorner.ADAPTER.parse_submit(t_cc.make_spec(), t_cc.make_account(), t_cc.answer(200, body))
    assert (result.status, result.provider_refund_id) == (RefundStatus.PENDING, "55")
