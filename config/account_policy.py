"""Per-account destination rules, both optional, in an account's `options`:

    [accounts.cobo-main.options]
    destination_allowlist = ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL"]
    # or "file:allowlist.txt" (beside the accounts file): one address a line, blank and # lines skipped
    approval_threshold = "1000.00"
    # or per currency: { ETH_USDT = "1000.00", BTC_BTC = "0.05", "*" = "500" }

- allow-list: a refund to any other destination is refused at validation. EVM addresses compare
  without case (the case is only a checksum).
- approval threshold, in the refund's currency: a refund whose amount is above it waits in
  `awaiting_approval` until a person approves it (`refundq refund approve`). With a table, a
  currency neither listed nor covered by "*" needs approval at any amount: an account that sends a
  new token is held, not waved through.

parse_accounts resolves both at load (the file is read once, like secrets) and refuses a bad value
naming the account and the option; the accessors also take values written by hand in tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from providers.addresses import check_address
from providers.base import parse_plain_decimal

if TYPE_CHECKING:
    from config.accounts import Account

ALLOWLIST = "destination_allowlist"
THRESHOLD = "approval_threshold"
ANY_CURRENCY = "*"
_EVM = re.compile(r"0x[0-9a-fA-F]{40}")
MAX_ENTRY_CHARS = 200  # a destination's own limit (worker/validation.py)


def _error(account: str, option: str, rule: str) -> Exception:
    from config.accounts import AccountConfigError  # config.accounts imports this module

    return AccountConfigError(f"account {account!r}: option {option!r} {rule}")


def allowlist_key(address: str) -> str:
    """What the allow-list compares: EVM addresses without their checksum case, others as written."""
    return address.lower() if _EVM.fullmatch(address) else address


def _entries(account: str, value: Any, base_dir: Path | None) -> frozenset[str]:
    if isinstance(value, str) and value.startswith("file:") and base_dir is not None:
        path = Path(value[5:]) if Path(value[5:]).is_absolute() else base_dir / value[5:]
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise _error(account, ALLOWLIST, f"cannot read {path}: {exc.strerror}") from None
        value = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
    if not isinstance(value, list | tuple | frozenset | set):
        raise _error(account, ALLOWLIST, 'must be a list of addresses or "file:PATH"')
    if not value:
        raise _error(account, ALLOWLIST, "must name at least one address (an empty list would refuse every refund)")
    out = set()
    for i, entry in enumerate(value):
        if not isinstance(entry, str):
            raise _error(account, ALLOWLIST, f"entry {i + 1} must be a string")
        rule = "must be at most 200 characters" if len(entry) > MAX_ENTRY_CHARS else check_address(entry, None)
        if rule:
            raise _error(account, ALLOWLIST, f"entry {i + 1} ({entry[:60]!r}) {rule}")
        out.add(allowlist_key(entry))
    return frozenset(out)


def _amount(account: str, value: Any, where: str = "") -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        # A TOML float (1000.00 without quotes) may already have lost digits.
        raise _error(account, THRESHOLD, f'{where}must be a decimal string such as "1000.00"')
    try:
        amount = parse_plain_decimal(str(value))
    except ValueError as exc:
        raise _error(account, THRESHOLD, f"{where}{exc}") from None
    if amount <= 0:
        raise _error(account, THRESHOLD, f"{where}must be greater than zero")
    return amount


def _thresholds(account: str, value: Any) -> Decimal | dict[str, Decimal]:
    if isinstance(value, Mapping):
        if not value:
            raise _error(account, THRESHOLD, "must name at least one currency")
        return {str(k): _amount(account, v, f"[{k}] ") for k, v in value.items()}
    return _amount(account, value)


def resolve_policy_options(account: str, options: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The options with the allow-list read and both rules checked (AccountConfigError otherwise)."""
    out = dict(options)
    if ALLOWLIST in out:
        out[ALLOWLIST] = _entries(account, out[ALLOWLIST], base_dir)
    if THRESHOLD in out:
        out[THRESHOLD] = _thresholds(account, out[THRESHOLD])
    return out


def allowlist(account: Account) -> frozenset[str] | None:
    """The allowed destinations (allowlist_key form), or None: any destination."""
    value = account.option(ALLOWLIST)
    if value is None:
        return None
    return value if isinstance(value, frozenset) else _entries(account.name, value, None)


def approval_threshold(account: Account, currency: str) -> Decimal | None:
    """The amount above which a refund in `currency` needs approval; None: no approval needed."""
    value = account.option(THRESHOLD)
    if value is None:
        return None
    thresholds = _thresholds(account.name, value)
    if isinstance(thresholds, Decimal):
        return thresholds
    return thresholds.get(currency, thresholds.get(ANY_CURRENCY, Decimal(0)))


def needs_approval(account: Account, amount: Decimal, currency: str) -> bool:
    threshold = approval_threshold(account, currency)
    return threshold is not None and amount > threshold
