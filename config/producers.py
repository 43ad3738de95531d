"""Producers: who may send door (b) intake messages, and for which accounts.

Optional `[producers.<name>]` tables in the accounts file (the same TOML file as the accounts):

    [producers.shop]
    secret = "env:SHOP_PRODUCER_SECRET"        # or "file:PATH"; never inline; at least 32 characters
    accounts = ["cobo-main", "cryptomus-eu"]   # or ["*"] for every account

No `[producers]` at all is the single-tenant default: intake messages are not signed and may
name any account. Once one producer is configured, every intake message must name a producer
and carry its signature (worker/producer_auth.py), and may only use that producer's accounts.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from config.accounts import AccountConfigError, Accounts, parse_accounts, read_accounts_file, resolve_secret

ALL_ACCOUNTS = "*"
MIN_SECRET_LENGTH = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEYS = ("secret", "accounts")


class ProducerConfigError(AccountConfigError):
    """A `[producers.<name>]` table is malformed or its secret cannot be read."""


@dataclass(frozen=True)
class Producer:
    name: str
    secret: SecretStr = field(repr=False)
    accounts: frozenset[str]  # account names, or {"*"}: every account

    def may_use(self, account: str) -> bool:
        return ALL_ACCOUNTS in self.accounts or account in self.accounts


class Producers(Mapping[str, Producer]):
    def __init__(self, producers: Mapping[str, Producer] | None = None) -> None:
        self._producers = dict(producers or {})

    def __getitem__(self, name: str) -> Producer:
        return self._producers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._producers)

    def __len__(self) -> int:
        return len(self._producers)

    def __repr__(self) -> str:
        return f"Producers({sorted(self._producers)})"

    @property
    def configured(self) -> bool:
        """False: single tenant, intake is not signed."""
        return bool(self._producers)

    def secret_values(self) -> list[str]:
        return [p.secret.get_secret_value() for p in self._producers.values()]


def _accounts(name: str, raw: Any, account_names: Collection[str]) -> frozenset[str]:
    where = f"producer {name!r}: accounts"
    if raw is None:
        raise ProducerConfigError(f'{where} is required (a list of account names, or ["*"] for all)')
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise ProducerConfigError(f'{where} must be a list of account names (or ["*"] for all)')
    if not raw:
        raise ProducerConfigError(f'{where} must not be empty (list its account names, or ["*"] for all)')
    names = frozenset(raw)
    if ALL_ACCOUNTS in names:
        if len(names) > 1:
            raise ProducerConfigError(f'{where}: "*" means every account and must be the only entry')
        return names
    unknown = sorted(names - set(account_names))
    if unknown:
        raise ProducerConfigError(
            f"{where}: unknown account {', '.join(map(repr, unknown))} (known: {', '.join(sorted(account_names))})"
        )
    return names


def _secret(name: str, raw: Any, base_dir: Path) -> SecretStr:
    label = f"producer {name!r}: secret"
    if not isinstance(raw, str):
        raise ProducerConfigError(f"{label} is required: 'env:NAME' or 'file:PATH' (secrets are never inline)")
    try:
        secret = resolve_secret(raw, base_dir=base_dir, label=label)
    except AccountConfigError as exc:
        raise ProducerConfigError(str(exc)) from None
    if len(secret.get_secret_value()) < MIN_SECRET_LENGTH:
        raise ProducerConfigError(
            f"{label} is shorter than {MIN_SECRET_LENGTH} characters (make one with `openssl rand -hex 32`)"
        )
    return secret


def parse_producers(data: Mapping[str, Any], base_dir: Path, account_names: Collection[str]) -> Producers:
    """The `[producers.<name>]` tables of the parsed accounts file; empty when there are none."""
    if "producers" not in data:
        return Producers()
    table = data["producers"]
    if not isinstance(table, dict):
        raise ProducerConfigError("producers: must be [producers.<name>] tables")
    if not table:
        # An empty [producers] header would silently leave intake unsigned: say so instead.
        raise ProducerConfigError(
            "producers: [producers] has no [producers.<name>] tables (remove it for an unsigned single-tenant setup)"
        )
    out: dict[str, Producer] = {}
    owner_of: dict[str, str] = {}
    for name, raw in table.items():
        if not _NAME.match(name):
            raise ProducerConfigError(
                f"producer {name!r}: a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        if not isinstance(raw, dict):
            raise ProducerConfigError(f"producer {name!r}: must be a table with 'secret' and 'accounts'")
        extra = sorted(set(raw) - set(_KEYS))
        if extra:
            raise ProducerConfigError(
                f"producer {name!r}: unknown key {', '.join(map(repr, extra))} (expected 'secret' and 'accounts')"
            )
        accounts = _accounts(name, raw.get("accounts"), account_names)
        secret = _secret(name, raw.get("secret"), base_dir)
        other = owner_of.setdefault(secret.get_secret_value(), name)
        if other != name:
            # A shared secret would let one producer sign as the other, with the other's accounts.
            raise ProducerConfigError(f"producer {name!r}: secret is the same as producer {other!r}'s; use one each")
        out[name] = Producer(name=name, secret=secret, accounts=accounts)
    return Producers(out)


def load_accounts_and_producers(path: Path) -> tuple[Accounts, Producers]:
    """Both from one read of the accounts file."""
    data = read_accounts_file(path)
    accounts = parse_accounts(data, path.parent)
    return accounts, parse_producers(data, path.parent, accounts.keys())
