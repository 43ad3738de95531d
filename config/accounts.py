"""Provider accounts, loaded from a TOML file.

Secrets are never written in the file itself: each one names an environment variable
(`env:NAME`) or a file (`file:/path`) that holds it. The resolved values live only in
memory, in `SecretStr`, and `secret_values()` feeds the log redactor.

    [accounts.cobo-main]
    provider = "cobo"
    base_url = "https://api.sandbox.cobo.com/v2"
    secrets = { api_private_key = "env:COBO_API_PRIVATE_KEY" }
    options = { response_public_key = "893d...", merchant_id = "M1001" }
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr


class AccountConfigError(ValueError):
    """The accounts file is malformed or names a secret that cannot be read."""


@dataclass(frozen=True)
class RateLimit:
    rate: float  # tokens per second
    burst: int


@dataclass(frozen=True)
class Account:
    name: str
    provider: str
    base_url: str
    secrets: Mapping[str, SecretStr] = field(default_factory=dict, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)
    rate_limit: RateLimit | None = None

    def secret(self, key: str) -> str:
        try:
            return self.secrets[key].get_secret_value()
        except KeyError:
            raise AccountConfigError(f"account {self.name!r}: secret {key!r} is not configured") from None

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.options:
            raise AccountConfigError(f"account {self.name!r}: option {key!r} is required")
        return self.options[key]


def resolve_secret(
    ref: str, *, account: str = "", key: str = "", base_dir: Path, label: str | None = None
) -> SecretStr:
    """Read an `env:NAME` or `file:PATH` reference. `label` names the secret in errors
    (default: "account 'x': secret 'k'"; producers pass "producer 'p': secret")."""
    label = label or f"account {account!r}: secret {key!r}"
    kind, _, target = ref.partition(":")
    if kind == "env":
        value = os.environ.get(target)
        if value is None:
            raise AccountConfigError(f"{label}: environment variable {target} is not set")
    elif kind == "file":
        path = Path(target) if Path(target).is_absolute() else base_dir / target
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AccountConfigError(f"{label}: cannot read {path}: {exc.strerror}") from None
    else:
        raise AccountConfigError(f"{label} must be 'env:NAME' or 'file:PATH' (secrets are never inline)")
    if not value:
        raise AccountConfigError(f"{label} is empty")
    return SecretStr(value)


class Accounts(Mapping[str, Account]):
    def __init__(self, accounts: Mapping[str, Account]) -> None:
        self._accounts = dict(accounts)

    def __getitem__(self, name: str) -> Account:
        return self._accounts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._accounts)

    def __len__(self) -> int:
        return len(self._accounts)

    def secret_values(self) -> list[str]:
        return [s.get_secret_value() for a in self._accounts.values() for s in a.secrets.values()]


def parse_accounts(data: Mapping[str, Any], base_dir: Path) -> Accounts:
    table = data.get("accounts")
    if not isinstance(table, dict):
        raise AccountConfigError("accounts file: missing [accounts.<name>] tables")
    out: dict[str, Account] = {}
    for name, raw in table.items():
        if not isinstance(raw, dict):
            raise AccountConfigError(f"account {name!r}: must be a table")
        for required in ("provider", "base_url"):
            if not isinstance(raw.get(required), str):
                raise AccountConfigError(f"account {name!r}: {required!r} is required and must be a string")
        secrets = {
            key: resolve_secret(str(ref), account=name, key=key, base_dir=base_dir)
            for key, ref in dict(raw.get("secrets", {})).items()
        }
        limit = raw.get("rate_limit")
        out[name] = Account(
            name=name,
            provider=raw["provider"],
            base_url=raw["base_url"].rstrip("/"),
            secrets=secrets,
            options=dict(raw.get("options", {})),
            rate_limit=RateLimit(float(limit["rate"]), int(limit.get("burst", 1))) if limit else None,
        )
    return Accounts(out)


def read_accounts_file(path: Path) -> dict[str, Any]:
    """The parsed TOML of the accounts file (accounts, and producers: config/producers.py)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AccountConfigError(f"accounts file {path} does not exist (set REFUNDQ_ACCOUNTS_FILE)") from None
    except tomllib.TOMLDecodeError as exc:
        raise AccountConfigError(f"accounts file {path}: {exc}") from None


def load_accounts(path: Path) -> Accounts:
    return parse_accounts(read_accounts_file(path), path.parent)
