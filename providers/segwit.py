"""Bech32 / bech32m segwit addresses (BIP-173, BIP-350): the decoding half of the reference
implementation (github.com/sipa/bech32, ref/python/segwit_addr.py, MIT), typed, with each refusal
named. Vendored because the `bech32` package on PyPI stopped before BIP-350: it would refuse every
taproot (bc1p...) address as a bad checksum."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32M_CONST = 0x2BC830A3
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Encoding(Enum):
    BECH32 = 1  # BIP-173: witness version 0
    BECH32M = 2  # BIP-350: witness versions 1 to 16


class SegwitError(ValueError):
    """The address is not a valid segwit address; the message is the rule it breaks."""


class ChecksumMismatch(SegwitError):
    """The checksum is wrong, or of the wrong kind for the witness version; says which."""


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GENERATOR[i] if ((top >> i) & 1) else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _verify_checksum(hrp: str, data: list[int]) -> Encoding | None:
    const = _polymod(_hrp_expand(hrp) + data)
    if const == 1:
        return Encoding.BECH32
    if const == _BECH32M_CONST:
        return Encoding.BECH32M
    return None


def _convertbits(data: Iterable[int], frombits: int, tobits: int) -> list[int] | None:
    """Regroup bits without padding (decoding): None when the padding is not zero or too long."""
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    max_acc = (1 << (frombits + tobits - 1)) - 1
    for value in data:
        acc = ((acc << frombits) | value) & max_acc
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if bits >= frombits or ((acc << (tobits - bits)) & maxv):
        return None
    return out


def decode(address: str) -> tuple[str, int, bytes]:
    """(hrp, witness version, witness program), or SegwitError naming the rule broken.
    ChecksumMismatch covers a checksum of the wrong kind too (bech32 for v1+, bech32m for v0):
    BIP-350 lists both as "invalid checksum"."""
    if any(ord(x) < 33 or ord(x) > 126 for x in address):
        raise SegwitError("must be printable ASCII")
    if address.lower() != address and address.upper() != address:
        raise SegwitError("must not mix upper and lower case")
    if len(address) > 90:
        raise SegwitError("must be at most 90 characters")
    address = address.lower()
    pos = address.rfind("1")
    if pos < 1 or pos + 7 > len(address):
        raise SegwitError("must be a prefix, '1' and at least 6 checksum characters")
    if any(x not in CHARSET for x in address[pos + 1 :]):
        raise SegwitError(f"may only use the bech32 characters {CHARSET} after the '1'")
    hrp = address[:pos]
    data = [CHARSET.find(x) for x in address[pos + 1 :]]
    encoding = _verify_checksum(hrp, data)
    if encoding is None:
        raise ChecksumMismatch("bech32")
    data = data[:-6]
    if not data:
        raise SegwitError("has no witness version")
    version = data[0]
    if version > 16:
        raise SegwitError("witness version must be 0 to 16")
    if (encoding is Encoding.BECH32) != (version == 0):
        kind = "bech32" if encoding is Encoding.BECH32 else "bech32m"
        raise ChecksumMismatch(f"{kind} checksum on witness version {version} (v0 takes bech32, v1-16 bech32m)")
    program = _convertbits(data[1:], 5, 8)
    if program is None:
        raise SegwitError("has invalid padding")
    if not 2 <= len(program) <= 40:
        raise SegwitError("witness program must be 2 to 40 bytes")
    if version == 0 and len(program) not in (20, 32):
        raise SegwitError("a version 0 witness program must be 20 or 32 bytes")
    return hrp, version, bytes(program)
