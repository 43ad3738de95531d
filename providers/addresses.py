"""Is a destination an address of the chain? Shape first (a TRON address sent to an Ethereum
token, a truncated paste, a stray space), then the chain's own checksum where it has one, so a
one-character typo is refused before money goes to an address nobody holds:

- tron, bitcoin legacy (1.../3..., testnet m/n/2...): base58check, and the version byte;
- bitcoin segwit (bc1.../tb1...): bech32 / bech32m with the witness rules (BIP-173, BIP-350);
- evm: EIP-55 when the address is mixed case (all lower or all upper case carries no checksum);
- solana: no checksum exists; the address must decode to a 32-byte public key.

Not proven: that the address exists or belongs to the customer (see the account allow-list)."""

from __future__ import annotations

import re

import base58
from Crypto.Hash import keccak

from providers import segwit

_BASE58 = "[1-9A-HJ-NP-Za-km-z]"
_WHITESPACE = re.compile(r"\s")  # str.isspace()'s set, checked in C (hot in batch validation)
# Always fullmatch: `$` would also accept a trailing newline.
_EVM = re.compile(r"0x[0-9a-fA-F]{40}")
_PATTERNS: dict[str, re.Pattern[str]] = {
    "evm": _EVM,
    "tron": re.compile(rf"T{_BASE58}{{33}}"),
    "solana": re.compile(rf"{_BASE58}{{32,44}}"),
    "bitcoin": re.compile(rf"bc1[02-9ac-hj-np-z]{{11,71}}|tb1[02-9ac-hj-np-z]{{11,71}}|[13mn2]{_BASE58}{{25,34}}"),
}
CHECKSUM_RULE = "checksum does not match (a typo?)"

# Base58check version bytes a family accepts: TRON 0x41; Bitcoin P2PKH 0x00 ("1"), P2SH 0x05
# ("3"), testnet P2PKH 0x6f ("m"/"n"), testnet P2SH 0xc4 ("2").
_VERSIONS = {"tron": frozenset({0x41}), "bitcoin": frozenset({0x00, 0x05, 0x6F, 0xC4})}
_SEGWIT_HRPS = frozenset({"bc", "tb"})
SOLANA_KEY_BYTES = 32

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
    """None when valid, else the rule it breaks (for a FieldError). With no family (a chain
    refundq cannot tell), only what the shape proves: an EVM-shaped address still gets EIP-55."""
    if not address:
        return "must not be empty"
    if _WHITESPACE.search(address):
        return "must not contain whitespace"
    if family is None:
        if not 20 <= len(address) <= 128:
            return "must be 20 to 128 characters"
        return _eip55(address) if _EVM.fullmatch(address) else None
    if not _PATTERNS[family].fullmatch(address):
        return f"is not a valid {family} address"
    if family == "evm":
        return _eip55(address)
    if family == "solana":
        return _solana(address)
    if family == "bitcoin" and address[:3] in ("bc1", "tb1"):
        return _segwit(address)
    return _base58check(address, family)


def _eip55(address: str) -> str | None:
    hexpart = address[2:]
    if hexpart == hexpart.lower() or hexpart == hexpart.upper():
        return None  # no checksum to check (EIP-55: all one case is valid)
    digest = keccak.new(digest_bits=256, data=hexpart.lower().encode("ascii")).hexdigest()
    for char, nibble in zip(hexpart, digest[:40], strict=True):
        if char.isalpha() and char.isupper() != (int(nibble, 16) >= 8):
            return f"{CHECKSUM_RULE}: EIP-55 mixed case"
    return None


def _base58check(address: str, family: str) -> str | None:
    try:
        payload = base58.b58decode_check(address)
    except ValueError:
        return f"{CHECKSUM_RULE}: base58check"
    if len(payload) != 21 or payload[0] not in _VERSIONS[family]:
        return f"is not a valid {family} address (version byte 0x{payload[0]:02x}, {len(payload)} bytes)"
    return None


def _segwit(address: str) -> str | None:
    try:
        hrp, _version, _program = segwit.decode(address)
    except segwit.ChecksumMismatch as exc:
        return f"{CHECKSUM_RULE}: {exc}"
    except segwit.SegwitError as exc:
        return f"is not a valid bitcoin address: {exc}"
    if hrp not in _SEGWIT_HRPS:  # the shape pattern allows only these; kept as the rule's record
        return "is not a valid bitcoin address: prefix must be bc1 or tb1"
    return None


def _solana(address: str) -> str | None:
    size = len(base58.b58decode(address))
    if size != SOLANA_KEY_BYTES:
        return f"is not a valid solana address: decodes to {size} bytes, a public key is {SOLANA_KEY_BYTES}"
    return None
