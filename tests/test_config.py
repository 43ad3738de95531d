"""Celery invariants, secret redaction, account loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from config.accounts import AccountConfigError, load_accounts, parse_accounts
from config.logging import configure_logging, redact, register_secrets, scrub
from config.settings import Settings
from worker.app import check_invariants, make_celery


def test_default_configuration_holds_every_invariant() -> None:
    assert check_invariants(make_celery(Settings()).conf) == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"task_time_limit": 400}, "task_time_limit (400s) must be below the visibility timeout"),
        ({"max_countdown": 300}, "countdown (300s) must be below the visibility timeout"),
        ({"task_soft_time_limit": 95}, "task_soft_time_limit (95) must be set and below task_time_limit"),
        ({"http_read_timeout": 70}, "must be below task_soft_time_limit"),
        ({"lease_seconds": 30}, "lease_seconds (30s) must exceed task_time_limit"),
    ],
)
def test_broken_settings_are_named(changes: dict, problem: str) -> None:
    problems = check_invariants(make_celery(Settings(**changes)).conf)
    assert any(problem in p for p in problems), problems


def test_broken_celery_conf_is_named() -> None:
    app = make_celery(Settings())
    app.conf.task_acks_late = False
    app.conf.worker_prefetch_multiplier = 4
    app.conf.accept_content = ["json", "pickle"]
    problems = "\n".join(check_invariants(app.conf))
    assert "task_acks_late" in problems and "prefetch" in problems and "pickle" in problems


def test_secrets_never_reach_log_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "s3cr3t-api-key-value-123"
    register_secrets([secret])
    configure_logging("json")
    log = structlog.get_logger("t")
    try:
        raise ValueError(f"provider said: bad key {secret}")
    except ValueError:
        log.exception("boom", header=f"Bearer {secret}", nested={"k": [secret]})
    err = capsys.readouterr().err
    structlog.reset_defaults()
    assert secret not in err
    assert "[REDACTED]" in err
    assert json.loads(err.strip().splitlines()[-1])["header"] == "Bearer [REDACTED]"


def test_secrets_are_redacted_in_any_letter_case(capsys: pytest.CaptureFixture[str]) -> None:
    # CoinCorner signs with the key lower-cased, and a provider error may echo it back so.
    secret = "Ab12Cd34-eF56-GH78-secret"
    longer = secret + "-and-more"  # longest first: never half-redacted
    register_secrets([secret, longer])
    configure_logging("json")
    structlog.get_logger("t").error("refused", message=f"bad key {secret.lower()}", again=secret.upper())
    line = capsys.readouterr().err
    structlog.reset_defaults()
    for text in (
        line,
        redact(f"{secret.lower()} {secret.upper()} {longer.swapcase()}"),
        str(scrub({"k": [secret.upper()]})),
    ):
        assert secret.lower() not in text.lower(), text
        assert "[REDACTED]" in text and "and-more" not in text.lower()
    assert redact("nothing secret here") == "nothing secret here"


def test_accounts_reject_inline_secrets(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(
        '[accounts.x]\nprovider="cobo"\nbase_url="https://api.cobo.com/v2"\nsecrets={api_private_key="abc"}\n'
    )
    with pytest.raises(AccountConfigError, match="must be 'env:NAME' or 'file:PATH'"):
        load_accounts(path)


def test_accounts_read_secrets_from_env_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "k").write_text("file-secret\n")
    monkeypatch.setenv("MY_KEY", "env-secret")
    path = tmp_path / "a.toml"
    path.write_text(
        '[accounts.x]\nprovider="cobo"\nbase_url="http://127.0.0.1/v2/"\nsecrets={a="env:MY_KEY", b="file:k"}\n'
    )
    account = load_accounts(path)["x"]
    assert account.secret("a") == "env-secret" and account.secret("b") == "file-secret"
    assert account.base_url == "http://127.0.0.1/v2"
    assert "env-secret" not in repr(account)
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(AccountConfigError, match="MY_KEY is not set"):
        load_accounts(path)


def _accounts(tmp_path: Path, **tables: dict) -> Any:
    (tmp_path / "k1").write_text("signing-key-one")
    (tmp_path / "k2").write_text("signing-key-two")
    return parse_accounts({"accounts": tables}, tmp_path)


def _account(base_url: str, provider: str = "cobo", **extra: object) -> dict:
    return {"provider": provider, "base_url": base_url, "secrets": {"api_key": "file:k1"}, **extra}


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ftp://api.cobo.com/v2", "must use https (http only for loopback)"),
        ("http://169.254.169.254/latest/meta-data", "must use https (http only for loopback)"),
        ("http://api.cobo.com/v2", "must use https (http only for loopback)"),
        ("https://api.cobo.com@evil.example/v2", "must not contain user info"),
        ("not a url", "must be an absolute URL"),
        ("https://api.cobo.com/v2?to=evil", "must not have a query or a fragment"),
        ("https://api.cobo.com/v2#x", "must not have a query or a fragment"),
        ("https://evil.example/v2", "not a documented cobo host"),
        ("https://api.cryptomus.com", "not a documented cobo host"),  # another provider's host
    ],
)
def test_unsafe_base_urls_are_refused_by_account_and_rule(tmp_path: Path, url: str, rule: str) -> None:
    with pytest.raises(AccountConfigError) as info:
        _accounts(tmp_path, bad=_account(url))
    assert str(info.value).startswith("account 'bad': base_url ") and rule in str(info.value)


@pytest.mark.parametrize(
    ("provider", "url"),
    [
        ("cobo", "https://api.cobo.com/v2"),
        ("cobo", "https://api.sandbox.cobo.com/v2"),
        ("coincorner", "https://checkout.coincorner.com/api"),
        ("coinvoyage", "https://api.coinvoyage.io/v2"),
        ("cryptomus", "https://api.cryptomus.com"),
        ("cryptomus", "http://127.0.0.1:8700/cryptomus"),  # the sandbox
        ("cobo", "http://127.9.9.9/cobo/v2"),
        ("cobo", "http://[::1]:8700/cobo/v2"),
        ("cobo", "http://localhost:8700/cobo/v2"),
    ],
)
def test_documented_and_loopback_base_urls_load(tmp_path: Path, provider: str, url: str) -> None:
    assert _accounts(tmp_path, ok=_account(url, provider))["ok"].base_url == url


def test_a_custom_host_needs_the_opt_in(tmp_path: Path) -> None:
    with pytest.raises(AccountConfigError, match="allow_custom_host = true"):
        _accounts(tmp_path, proxy=_account("https://egress.internal.example/cobo/v2"))
    loaded = _accounts(tmp_path, proxy=_account("https://egress.internal.example/cobo/v2", allow_custom_host=True))
    assert loaded["proxy"].base_url == "https://egress.internal.example/cobo/v2"
    with pytest.raises(AccountConfigError, match="must use https"):  # the opt-in is for the host only
        _accounts(tmp_path, proxy=_account("http://egress.internal.example/cobo/v2", allow_custom_host=True))
    with pytest.raises(AccountConfigError, match="allow_custom_host must be true or false"):
        _accounts(tmp_path, proxy=_account("https://egress.internal.example", allow_custom_host="yes"))


def test_example_and_sandbox_accounts_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from sandbox.accounts import write_sandbox_accounts

    example = Path(__file__).parent.parent / "accounts.example.toml"
    for var in ("COBO_API_PRIVATE_KEY", "COINCORNER_API_KEY", "COINCORNER_API_SECRET", "COINVOYAGE_API_KEY"):
        monkeypatch.setenv(var, f"value-of-{var}")
    for var in ("COINVOYAGE_API_SECRET", "COINVOYAGE_WEBHOOK_SECRET", "CRYPTOMUS_PAYMENT_API_KEY"):
        monkeypatch.setenv(var, f"value-of-{var}")
    assert len(parse_accounts(tomllib.loads(example.read_text()), example.parent)) == 4
    assert len(load_accounts(write_sandbox_accounts(tmp_path, "http://127.0.0.1:8700"))) == 4


def test_accounts_sharing_a_signing_key_share_a_named_key_group(tmp_path: Path) -> None:
    from worker.nonces import key_id

    shared = {"api_key": "file:k1", "webhook_secret": "file:k2"}  # a webhook secret signs no request
    accounts = _accounts(
        tmp_path,
        zeta=_account("https://api.cobo.com/v2") | {"secrets": shared},
        alpha=_account("https://api.sandbox.cobo.com/v2"),
        other=_account("https://api.cobo.com/v2") | {"secrets": {"api_key": "file:k2"}},
        cryptomus=_account("https://api.cryptomus.com", "cryptomus"),  # same key, another provider
    )
    assert key_id(accounts["zeta"]) == key_id(accounts["alpha"]) == "alpha"  # the first name, sorted
    assert key_id(accounts["other"]) == "other" and key_id(accounts["cryptomus"]) == "cryptomus"
    explicit = _accounts(
        tmp_path,
        a=_account("https://api.cobo.com/v2", options={"nonce_group": "cobo-key-1"}),
        b=_account("https://api.cobo.com/v2"),
    )
    assert key_id(explicit["a"]) == key_id(explicit["b"]) == "cobo-key-1"
    with pytest.raises(AccountConfigError, match="must share one nonce_group"):
        _accounts(
            tmp_path,
            a=_account("https://api.cobo.com/v2", options={"nonce_group": "g1"}),
            b=_account("https://api.cobo.com/v2", options={"nonce_group": "g2"}),
        )


def test_a_sandbox_off_loopback_loads_only_by_opting_in(tmp_path: Path) -> None:
    """docker-compose reaches the sandbox as http://sandbox:8700: the generated file opts in, per
    account; without the opt-in the same URL is refused."""
    from sandbox.accounts import write_sandbox_accounts

    path = write_sandbox_accounts(tmp_path, "http://sandbox:8700")
    assert {a.base_url.split("/")[2] for a in load_accounts(path).values()} == {"sandbox:8700"}
    path.write_text(path.read_text().replace("allow_plain_http = true\n", ""))
    with pytest.raises(AccountConfigError, match="must use https"):
        load_accounts(path)
