"""Provider accounts, loaded from a TOML file.

Secrets are never written in the file itself: each one names an environment variable
(`env:NAME`) or a file (`file:/path`) that holds it. The resolved values live only in
memory, in `SecretStr`, and `secret_values()` feeds the log redactor.

    [accounts.cobo-main]
    provider = "cobo"
    base_url = "https://api.sandbox.cobo.com/v2"
    secrets = { api_private_key = "env:COBO_API_PRIVATE_KEY" }
    options = { response_public_key = "893d...", merchant_id = "M1001" }

`base_url` is https on one of the provider's documented hosts (DOCUMENTED_HOSTS); plain http
only for loopback (the sandbox); never user info, a query or a fragment. Another host needs
`allow_custom_host = true` in the account's table.

Options `destination_allowlist` and `approval_threshold` are checked here too
(config/account_policy.py).

Accounts that sign with the same key share one nonce counter and one send lane (the provider
sequences nonces per key): their `key_group` is the name of the first of them (sorted), or
their common `options.nonce_group`. Redis keys and logs carry that name, never a digest of a
secret.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    #: who shares this account's nonce counter and send lane (see the module docstring); "" = alone
    key_group: str = ""

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


#: The providers' documented production and sandbox hosts (shared/providers/*.md, section 1).
DOCUMENTED_HOSTS: Mapping[str, frozenset[str]] = {
    "cobo": frozenset({"api.cobo.com", "api.dev.cobo.com", "api.sandbox.cobo.com"}),
    "coincorner": frozenset({"checkout.coincorner.com"}),  # production only; no sandbox documented
    "coinvoyage": frozenset({"api.coinvoyage.io"}),
    "cryptomus": frozenset({"api.cryptomus.com"}),  # no sandbox host
}
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\\]")
_GROUP = re.compile(r"[A-Za-z0-9._-]{1,100}")
_NOT_SIGNING = frozenset({"webhook_secret"})  # verifies what providers send us; signs no request


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(
    name: str, provider: str, url: str, *, allow_custom_host: bool = False, allow_plain_http: bool = False
) -> None:
    """Credentials are sent to base_url: refuse anything that could send them elsewhere than meant."""

    def refuse(rule: str) -> AccountConfigError:
        return AccountConfigError(f"account {name!r}: base_url {rule}")

    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise refuse("must be an absolute URL such as https://api.example.com/v2")
    if _UNSAFE.search(url):
        raise refuse("must not contain whitespace, control characters or backslashes")
    if "@" in parts.netloc:
        raise refuse("must not contain user info (user@host)")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise refuse("must not have a query or a fragment")
    host = parts.hostname or ""
    try:
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        raise refuse("has an invalid port") from None
    if not host:
        raise refuse("must name a host")
    loopback = _is_loopback(host)
    if parts.scheme != "https" and not (parts.scheme == "http" and (loopback or allow_plain_http)):
        raise refuse("must use https (http only for loopback); allow_plain_http = true opts in")
    documented = DOCUMENTED_HOSTS.get(provider, frozenset())
    if not (loopback or host in documented or allow_custom_host):
        hosts = ", ".join(sorted(documented)) or "none"
        raise refuse(
            f"host {host!r} is not a documented {provider} host ({hosts}); "
            "set allow_custom_host = true in the account to use it"
        )


def _key_groups(accounts: Mapping[str, Account]) -> dict[str, str]:
    """Account name -> key group. Compares secrets in memory; derives nothing from them."""
    same_key: dict[tuple[Any, ...], list[str]] = {}
    for name in sorted(accounts):
        account = accounts[name]
        signing = sorted((k, v.get_secret_value()) for k, v in account.secrets.items() if k not in _NOT_SIGNING)
        same_key.setdefault((account.provider, *signing), []).append(name)
    groups: dict[str, str] = {}
    for names in same_key.values():
        chosen = {accounts[n].options["nonce_group"] for n in names if "nonce_group" in accounts[n].options}
        for group in chosen:
            if not isinstance(group, str) or not _GROUP.fullmatch(group):
                raise AccountConfigError(
                    f"account {names[0]!r}: option 'nonce_group' must be 1 to 100 letters, digits, '.', '_' or '-'"
                )
        if len(chosen) > 1:
            raise AccountConfigError(
                f"accounts {', '.join(map(repr, names))} sign with the same key, so they must share one "
                f"nonce_group (found {', '.join(sorted(map(repr, chosen)))})"
            )
        for name in names:
            groups[name] = next(iter(chosen)) if chosen else names[0]
    return groups


def _policy_options(name: str, options: Any, base_dir: Path) -> dict[str, Any]:
    """The options, with the destination allow-list and approval threshold checked and resolved."""
    # Imported here: config.account_policy needs providers, whose base module imports this one.
    from config.account_policy import resolve_policy_options

    if not isinstance(options, dict):
        raise AccountConfigError(f"account {name!r}: options must be a table")
    return resolve_policy_options(name, options, base_dir)


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
        opt_ins = {key: raw.get(key, False) for key in ("allow_custom_host", "allow_plain_http")}
        for key, value in opt_ins.items():
            if not isinstance(value, bool):
                raise AccountConfigError(f"account {name!r}: {key} must be true or false")
        check_base_url(name, raw["provider"], raw["base_url"], **opt_ins)
        limit = raw.get("rate_limit")
        out[name] = Account(
            name=name,
            provider=raw["provider"],
            base_url=raw["base_url"].rstrip("/"),
            secrets=secrets,
            options=_policy_options(name, raw.get("options", {}), base_dir),
            rate_limit=RateLimit(float(limit["rate"]), int(limit.get("burst", 1))) if limit else None,
        )
    groups = _key_groups(out)
    return Accounts({name: dataclasses.replace(a, key_group=groups[name]) for name, a in out.items()})


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
