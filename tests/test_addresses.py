"""Destination checksums (providers/addresses.py): real, well-known addresses of each chain pass;
the same with one character changed is refused as a typo, by the checker and by every adapter."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import base58
import pytest

from config.accounts import load_accounts
from providers.addresses import check_address
from sandbox.accounts import write_sandbox_accounts
from worker.demo import ADDRESSES, demo_requests
from worker.validation import ValidationFailed, check

CHECKSUM = "checksum does not match (a typo?)"

VALID = {
    "bitcoin": [
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",  # the genesis block's coinbase
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",  # P2SH
        "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",  # testnet P2PKH
        "2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc",  # testnet P2SH
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",  # BIP-173 (v0, 20 bytes)
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",  # BIP-173 (v0, 32 bytes)
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",  # BIP-350 taproot
        "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",  # BIP-350
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",  # BIP-350 (v1, 40 bytes)
        "bc1sw50qgdz25j",  # BIP-350 (v16, 2 bytes)
    ],
    "tron": [
        "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t",  # the USDT contract
        "TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU7",
    ],
    "evm": [
        # EIP-55's own examples: mixed case (checksummed), all upper, all lower
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        "0x52908400098527886E0F7030069857D2E4169EE7",
        "0xde709f2102306220921060314715629080e2fb77",
    ],
    "solana": [
        "So11111111111111111111111111111111111111112",  # wrapped SOL mint
        "11111111111111111111111111111111",  # the system program
        "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",  # USDC mint
    ],
}

# (family, address with one character changed)
TYPOS = [
    ("bitcoin", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb"),
    ("bitcoin", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLz"),
    ("bitcoin", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5"),
    ("bitcoin", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3q4"),
    ("bitcoin", "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj9"),
    ("tron", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6u"),  # the last character
    ("tron", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj7t"),
    ("evm", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"),  # one letter's case
    ("evm", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAee"),  # one digit
    ("evm", "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d358"),
    # A checksum of the other kind is refused as a checksum too (BIP-350's invalid vectors).
    ("bitcoin", "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd"),
    ("bitcoin", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh"),
]


@pytest.mark.parametrize(("family", "address"), [(f, a) for f, addrs in VALID.items() for a in addrs])
def test_real_addresses_pass(family: str, address: str) -> None:
    assert check_address(address, family) is None


@pytest.mark.parametrize(("family", "address"), TYPOS)
def test_one_character_changed_is_a_checksum_error(family: str, address: str) -> None:
    rule = check_address(address, family)
    assert rule is not None and rule.startswith(CHECKSUM), rule


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("bc1qr508d6qejxtdg4y5r3zarvaryv98gj9p", "version 0 witness program must be 20 or 32 bytes"),
        ("bc130xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq7zws8r", "witness version must be 0 to 16"),
        ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "invalid padding"),
        ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "invalid padding"),
        ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "is not a valid bitcoin address"),  # shape: lower case only
    ],
)
def test_segwit_rules_beyond_the_checksum(address: str, rule: str) -> None:
    assert rule in (check_address(address, "bitcoin") or "")


def test_base58check_version_byte_and_length_are_the_chains() -> None:
    # Valid checksums, wrong payloads: TRON's version is 0x41 (0x42 and 0x40 also encode to "T...");
    # a bitcoin payload is 21 bytes.
    assert "version byte 0x42" in (check_address(base58.b58encode_check(b"\x42" + bytes(20)).decode(), "tron") or "")
    assert "version byte 0x40" in (check_address("T9yD14Nj9j7xAB4dbGeiX9h8unkKB9nv2z", "tron") or "")
    assert "22 bytes" in (check_address(base58.b58encode_check(bytes(22)).decode(), "bitcoin") or "")
    assert check_address(base58.b58encode_check(bytes(21)).decode(), "bitcoin") is None  # P2PKH of zeros


def test_solana_must_decode_to_a_32_byte_key() -> None:
    # No checksum exists: the length is all there is to check.
    assert "decodes to 31 bytes" in (check_address("So1111111111111111111111111111111111111111", "solana") or "")
    assert "decodes to 33 bytes" in (check_address("z" * 44, "solana") or "")


def test_evm_case_is_only_checked_when_mixed() -> None:
    lower = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
    assert check_address(lower, "evm") is None
    assert check_address(lower.upper().replace("0X", "0x"), "evm") is None
    # With no family (CoinVoyage), an EVM-shaped address still gets EIP-55.
    assert (check_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", None) or "").startswith(CHECKSUM)
    assert check_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", None) is None


# --- through each adapter's validate --------------------------------------------------------------

# provider -> (a valid destination, the same with one character changed)
THROUGH = {
    "cobo": ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BEAed"),
    "coincorner": ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNA"),
    # CoinVoyage names no chain refundq can map: an EVM-shaped address still gets EIP-55.
    "coinvoyage": ("0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359", "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5D359"),
    "cryptomus": ("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6T"),
}


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_accounts(write_sandbox_accounts(tmp_path_factory.mktemp("acc"), "http://127.0.0.1:9"))


def _request(provider: str, destination: str) -> dict[str, Any]:
    request = next(r for r in demo_requests(4) if r["provider"] == provider)
    return {**request, "destination": destination}


@pytest.mark.parametrize("provider", sorted(THROUGH))
def test_every_adapter_refuses_a_typo(provider: str, accounts: Any) -> None:
    good, typo = THROUGH[provider]
    check(_request(provider, good), accounts)
    with pytest.raises(ValidationFailed) as caught:
        check(_request(provider, typo), accounts)
    assert [str(e).split(" (a typo?)")[0] for e in caught.value.errors] == ["destination: checksum does not match"]


ADDRESS = re.compile(r"\b(0x[0-9a-fA-F]{40}|(?:bc1|tb1)[02-9ac-hj-np-z]{11,71}|T[1-9A-HJ-NP-Za-km-z]{33})\b")


def test_every_address_the_project_ships_is_valid(accounts: Any) -> None:
    """Demo, sandbox, bench, docs and tests send these to the checker: a fake one would be refused."""
    for provider, address in ADDRESSES.items():
        check(_request(provider, address), accounts)
    root = Path(__file__).resolve().parent.parent
    files = [
        *root.glob("tests/**/*.py"),
        *root.glob("tests/vectors/*.json"),
        *root.glob("worker/*.py"),
        *root.glob("bench/*.py"),
        *root.glob("sandbox/*.py"),
        root / "README.md",
        root / "accounts.example.toml",
        root / "tests/node/enqueue.mjs",
    ]
    bad = []
    for path in files:
        if path.name in ("test_addresses.py", "test_approval.py"):
            continue  # hold typos on purpose
        for found in ADDRESS.findall(path.read_text(encoding="utf-8")):
            family = "evm" if found.startswith("0x") else "tron" if found.startswith("T") else "bitcoin"
            if rule := check_address(found, family):
                bad.append(f"{path.relative_to(root)}: {found}: {rule}")
    assert bad == []
