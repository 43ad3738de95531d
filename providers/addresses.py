"""Is a destination plausible for a chain? Shape checks only: catching a TRON address sent to
an Ethereum token, a truncated paste or a stray space, not proving the address exists."""

from __future__ import annotations

import re

_BASE58 = "[1-9A-HJ-NP-Za-km-z]"
_WHITESPACE = re.compile(r"\s")  # str.isspace()'s set, checked in C (hot in batch validation)
# Always fullmatch: `$` would also accept a trailing newline.
_PATTERNS: dict[str, re.Pattern[str]] = {
    "evm": re.compile(r"0x[0-9a-fA-F]{40}"),
    "tron": re.compile(rf"T{_BASE58}{{33}}"),
    "solana": re.compile(rf"{_BASE58}{{32,44}}"),
    "bitcoin": re.compile(rf"bc1[02-9ac-hj-np-z]{{11,71}}|tb1[02-9ac-hj-np-z]{{11,71}}|[13mn2]{_BASE58}{{25,34}}"),
}

# Cobo-style token ids are CHAIN_TOKEN; the chain prefix picks the address family.
_CHAIN_FAMILY = {
    "ETH": "evm",
    "BSC": "evm",
    "BASE": "evm",
    "ARBITRUM": "evm",
    "MATIC": "evm",
    "POLYGON": "evm",
    "OPT": "evm",
    "AVAXC": "evm",
    "TRON": "tron",
    "TRX": "tron",
    "SOL": "solana",
    "BTC": "bitcoin",
}


def family_for_token(token_id: str) -> str | None:
    chain = token_id.split("_", 1)[0].upper()
    return _CHAIN_FAMILY.get(chain)


def check_address(address: str, family: str | None) -> str | None:
    """None when plausible, else the rule it breaks (for a FieldError)."""
    if not address:
        return "must not be empty"
    if _WHITESPACE.search(address):
        return "must not contain whitespace"
    if family is None:
        return None if 20 <= len(address) <= 128 else "must be 20 to 128 characters"
    if not _PATTERNS[family].fullmatch(address):
        return f"is not a valid {family} address"
    return None
