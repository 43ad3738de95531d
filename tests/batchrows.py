"""Valid bulk rows across the four providers (shapes from worker/demo.py), for tests and bench/."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from worker.demo import own_payment

PROVIDERS = ("cobo", "coincorner", "coinvoyage", "cryptomus")
ADDRESSES = {
    "cobo": "0x" + "5a" * 20,
    "coincorner": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
    "coinvoyage": "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV",
    "cryptomus": "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL",
}
CURRENCY = {"cobo": "ETH_USDT", "coincorner": "GBP", "coinvoyage": "USD", "cryptomus": "USDT"}
# sandbox scenario (amount cents / sbxNN marker) -> final status refundq reaches
EXPECTED = {0: "completed", 51: "failed", 58: "rejected"}
MIX = (0, 0, 0, 0, 0, 0, 51, 58)


def code_of(i: int) -> int:
    return MIX[(i // 4) % len(MIX)]


def expected(i: int) -> str:
    """The final status row i reaches (CoinCorner has no failure status: its 51 completes)."""
    code = code_of(i)
    return "completed" if code == 51 and PROVIDERS[i % 4] == "coincorner" else EXPECTED[code]


def row(i: int, run: str, code: int | None = None) -> dict[str, Any]:
    provider = PROVIDERS[i % 4]
    code = code_of(i) if code is None else code
    cents = code if code else (i % 40) + 1  # 1..40: normal
    amount = Decimal(10 + i % 90) + Decimal(cents) / 100
    whole, frac = format(amount, "f").split(".")
    # Cryptomus refunds a whole invoice: the sandbox invoice amount comes from an `amt` marker.
    order = (
        f"{run}-{i}" + (f"-sbx{code:02d}" if code else "") + (f"-amt{whole}_{frac}" if provider == "cryptomus" else "")
    )
    per_provider: dict[str, dict[str, Any]] = {
        "cobo": {},
        "coincorner": {"order_id": order},
        "coinvoyage": {"payorder_id": order, "chain_id": 30000000000001},
        "cryptomus": {"order_id": order, "network": "tron"},
    }
    fields = per_provider[provider]
    return own_payment(
        {
            "idempotency_key": f"{run}-{i}",
            "provider": provider,
            "account": f"{provider}-sandbox",
            "amount": format(amount, "f"),
            "currency": CURRENCY[provider],
            "destination": ADDRESSES[provider],
            "fields": fields,
        }
    )


def rows(n: int, run: str) -> Iterator[dict[str, Any]]:
    return (row(i, run) for i in range(n))


def write_csv(path: Path, items: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["idempotency_key", "provider", "account", "amount", "paid_amount", "currency", "destination", "fields"]
        )
        for r in items:
            w.writerow(
                [
                    r["idempotency_key"],
                    r["provider"],
                    r["account"],
                    r["amount"],
                    r.get("paid_amount", ""),
                    r["currency"],
                    r["destination"],
                    json.dumps(r["fields"]),
                ]
            )
    return path


def write_jsonl(path: Path, items: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in items:
            f.write(json.dumps(r) + "\n")
    return path
