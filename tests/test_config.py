"""Celery invariants, secret redaction, account loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from config.accounts import AccountConfigError, load_accounts
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
    path.write_text('[accounts.x]\nprovider="cobo"\nbase_url="http://h"\nsecrets={api_private_key="abc"}\n')
    with pytest.raises(AccountConfigError, match="must be 'env:NAME' or 'file:PATH'"):
        load_accounts(path)


def test_accounts_read_secrets_from_env_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "k").write_text("file-secret\n")
    monkeypatch.setenv("MY_KEY", "env-secret")
    path = tmp_path / "a.toml"
    path.write_text('[accounts.x]\nprovider="cobo"\nbase_url="http://h/"\nsecrets={a="env:MY_KEY", b="file:k"}\n')
    account = load_accounts(path)["x"]
    assert account.secret("a") == "env-secret" and account.secret("b") == "file-secret"
    assert account.base_url == "http://h"
    assert "env-secret" not in repr(account)
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(AccountConfigError, match="MY_KEY is not set"):
        load_accounts(path)
