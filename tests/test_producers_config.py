"""`[producers.<name>]` in the accounts file: parsing, named errors, runtime wiring, redaction."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from config.accounts import AccountConfigError, load_accounts
from config.logging import REDACTED, redact
from config.producers import ProducerConfigError, load_accounts_and_producers, parse_producers
from config.settings import Settings
from worker.runtime import Runtime, build_runtime

ACCOUNTS = """
[accounts.cobo-main]
provider = "cobo"
base_url = "http://127.0.0.1:1"

[accounts.cryptomus-eu]
provider = "cryptomus"
base_url = "http://127.0.0.1:1"
"""

SHOP = "shop-secret-from-env-0123456789abcdef"
OPS = "ops-secret-from-a-file-0123456789abcdef"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PRODUCER_SECRET", SHOP)
    monkeypatch.setenv("SHORT_SECRET", "too-short")
    monkeypatch.setenv("SAME_AS_SHOP", SHOP)


def write(tmp_path: Path, producers: str) -> Path:
    (tmp_path / "ops.key").write_text(OPS + "\n")
    path = tmp_path / "accounts.toml"
    path.write_text(producers + ACCOUNTS)  # producers first: a bare key after [accounts.x] belongs to it
    return path


def test_no_producers_section_is_single_tenant(tmp_path: Path) -> None:
    accounts, producers = load_accounts_and_producers(write(tmp_path, ""))
    assert set(accounts) == {"cobo-main", "cryptomus-eu"}
    assert not producers.configured and len(producers) == 0 and producers.secret_values() == []


def test_producers_are_parsed(tmp_path: Path, env: None) -> None:
    path = write(
        tmp_path,
        """
[producers.shop]
secret = "env:SHOP_PRODUCER_SECRET"
accounts = ["cobo-main", "cryptomus-eu", "cobo-main"]

[producers.ops]
secret = "file:ops.key"
accounts = ["*"]
""",
    )
    accounts, producers = load_accounts_and_producers(path)
    assert producers.configured and set(producers) == {"shop", "ops"}
    shop, ops = producers["shop"], producers["ops"]
    assert shop.name == "shop" and shop.accounts == frozenset({"cobo-main", "cryptomus-eu"})
    assert shop.secret.get_secret_value() == SHOP and ops.secret.get_secret_value() == OPS
    assert shop.may_use("cobo-main") and not shop.may_use("other")
    assert ops.accounts == frozenset({"*"}) and ops.may_use("anything")
    assert sorted(producers.secret_values()) == sorted([SHOP, OPS])
    assert SHOP not in repr(shop) and SHOP not in repr(producers)
    # Accounts alone still load from a file with producers in it.
    assert set(load_accounts(path)) == set(accounts)


@pytest.mark.parametrize(
    ("producers", "error"),
    [
        ("[producers]\n", "producers: [producers] has no [producers.<name>] tables"),
        ('producers = ["shop"]\n', "producers: must be [producers.<name>] tables"),
        ('[producers.shop]\nsecret = "env:SHOP_PRODUCER_SECRET"\n', "producer 'shop': accounts is required"),
        (
            '[producers.shop]\nsecret = "env:SHOP_PRODUCER_SECRET"\naccounts = []\n',
            "producer 'shop': accounts must not be empty",
        ),
        (
            '[producers.shop]\nsecret = "env:SHOP_PRODUCER_SECRET"\naccounts = "cobo-main"\n',
            "producer 'shop': accounts must be a list of account names",
        ),
        (
            '[producers.shop]\nsecret = "env:SHOP_PRODUCER_SECRET"\naccounts = ["cobo-main", "nope"]\n',
            "producer 'shop': accounts: unknown account 'nope' (known: cobo-main, cryptomus-eu)",
        ),
        (
            '[producers.shop]\nsecret = "env:SHOP_PRODUCER_SECRET"\naccounts = ["*", "cobo-main"]\n',
            "producer 'shop': accounts: \"*\" means every account and must be the only entry",
        ),
        (
            '[producers.shop]\nsecret = "this-is-an-inline-secret-0123456789abcdef"\naccounts = ["*"]\n',
            "producer 'shop': secret must be 'env:NAME' or 'file:PATH' (secrets are never inline)",
        ),
        ('[producers.shop]\naccounts = ["*"]\n', "producer 'shop': secret is required"),
        (
            '[producers.shop]\nsecret = "env:SHORT_SECRET"\naccounts = ["*"]\n',
            "producer 'shop': secret is shorter than 32 characters",
        ),
        (
            '[producers.shop]\nsecret = "env:UNSET_PRODUCER_SECRET"\naccounts = ["*"]\n',
            "producer 'shop': secret: environment variable UNSET_PRODUCER_SECRET is not set",
        ),
        (
            '[producers.shop]\nsecret = "file:missing.key"\naccounts = ["*"]\n',
            "producer 'shop': secret: cannot read",
        ),
        (
            '[producers.shop]\nsecret = "env:SHOP_PRODUCER_SECRET"\naccounts = ["*"]\nsecrets = "x"\n',
            "producer 'shop': unknown key 'secrets' (expected 'secret' and 'accounts')",
        ),
        ("producers.shop = 1\n", "producer 'shop': must be a table"),
        ('[producers."a b"]\nsecret = "env:SHOP_PRODUCER_SECRET"\naccounts = ["*"]\n', "producer 'a b': a name is"),
        (
            '[producers.shop]\nsecret = "env:SHOP_PRODUCER_SECRET"\naccounts = ["*"]\n'
            '[producers.ops]\nsecret = "env:SAME_AS_SHOP"\naccounts = ["*"]\n',
            "producer 'ops': secret is the same as producer 'shop''s; use one each",
        ),
    ],
)
def test_bad_producer_tables_are_named(tmp_path: Path, env: None, producers: str, error: str) -> None:
    with pytest.raises(ProducerConfigError) as exc:
        load_accounts_and_producers(write(tmp_path, producers))
    assert str(exc.value).startswith(error), str(exc.value)
    assert isinstance(exc.value, AccountConfigError)
    assert SHOP not in str(exc.value)


def test_account_secret_errors_keep_their_wording(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(
        '[accounts.x]\nprovider="cobo"\nbase_url="http://127.0.0.1:1"\nsecrets={k="env:UNSET_ACCOUNT_KEY"}\n'
    )
    with pytest.raises(AccountConfigError, match=r"^account 'x': secret 'k': environment variable UNSET_ACCOUNT_KEY"):
        load_accounts(path)


def test_runtime_loads_producers_and_redacts_their_secrets(tmp_path: Path, env: None) -> None:
    path = write(tmp_path, '[producers.shop]\nsecret = "env:SHOP_PRODUCER_SECRET"\naccounts = ["cobo-main"]\n')
    rt = build_runtime(Settings(accounts_file=path, database_url="sqlite:///" + str(tmp_path / "db")))
    assert rt.producers.configured and rt.producers["shop"].accounts == frozenset({"cobo-main"})
    assert redact(f"signed with {SHOP}") == f"signed with {REDACTED}"
    assert SHOP not in repr(rt)


def test_runtime_without_producers_defaults_to_none(tmp_path: Path) -> None:
    rt = Runtime(settings=Settings(), accounts=load_accounts(write(tmp_path, "")))
    assert not rt.producers.configured


def test_the_commented_example_parses_when_uncommented(env: None) -> None:
    root = Path(__file__).resolve().parent.parent
    text = (root / "accounts.example.toml").read_text()
    text = text.replace("# [producers.shop]", "[producers.shop]").replace("# secret = ", "secret = ")
    text = text.replace("# accounts = [", "accounts = [")
    data = tomllib.loads(text)
    producers = parse_producers(data, root, data["accounts"].keys())
    assert producers["shop"].accounts == frozenset({"cobo-main", "cryptomus-main"})
