"""Write an accounts file (and its secret files) for the sandbox: used by the demo, tests and
benchmarks. Secrets are random per call; nothing secret is shipped in the repository."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SANDBOX_COBO_KEY_FILE = "sandbox_cobo_response_key"


def _ed25519_pair() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ).hex()
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    return seed, public


SANDBOX_SETTLE = 8.0  # seconds: the sandbox executes a late create at most `execute_delay_seconds` after it


def write_sandbox_accounts(
    directory: Path, base_url: str, *, suffix: str = "sandbox", settle: float = SANDBOX_SETTLE
) -> Path:
    """Accounts `cobo-<suffix>`, `coincorner-<suffix>`, `coinvoyage-<suffix>`, `cryptomus-<suffix>`.
    `settle`: how long after an ambiguous send the worker waits before it believes a lookup's
    "absent" (option `settle_seconds`); the sandbox's own worst delay is known, so it is short."""
    directory.mkdir(parents=True, exist_ok=True)
    base_url = base_url.rstrip("/")
    merchant_seed, _ = _ed25519_pair()
    sandbox_seed, sandbox_public = _ed25519_pair()
    files = {
        "cobo_api_private_key": merchant_seed,
        SANDBOX_COBO_KEY_FILE: sandbox_seed,
        "coincorner_api_key": str(uuid.uuid4()).upper(),
        "coincorner_api_secret": secrets.token_hex(16).upper(),
        "coinvoyage_api_key": "pk_" + secrets.token_hex(12),
        "coinvoyage_api_secret": "sk_" + secrets.token_urlsafe(24),
        "coinvoyage_webhook_secret": "whsec_" + secrets.token_urlsafe(24),
        "cryptomus_api_key": secrets.token_urlsafe(48),
    }
    for name, value in files.items():
        path = directory / name
        path.write_text(value, encoding="utf-8")
        path.chmod(0o600)
    # A sandbox off loopback (a compose network) is plain http on an undocumented host: opt in.
    host = urlsplit(base_url).hostname or ""
    opt_in = "" if host in ("127.0.0.1", "localhost", "::1") else "allow_custom_host = true\nallow_plain_http = true\n"
    toml = f"""# Generated for the refundq sandbox. Never point these accounts at a real provider.
[sandbox]
cobo_response_private_key = "file:{SANDBOX_COBO_KEY_FILE}"

[accounts.cobo-{suffix}]
provider = "cobo"
base_url = "{base_url}/cobo/v2"
{opt_in}secrets = {{ api_private_key = "file:cobo_api_private_key" }}

[accounts.cobo-{suffix}.options]
response_public_key = "{sandbox_public}"
merchant_id = "M-{suffix}"
refund_type = "Merchant"
settle_seconds = {settle:g}

[accounts.coincorner-{suffix}]
provider = "coincorner"
base_url = "{base_url}/coincorner/api"
{opt_in}secrets = {{ api_key = "file:coincorner_api_key", api_secret = "file:coincorner_api_secret" }}
options = {{ user_id = "{secrets.randbelow(10**6)}", refund_type = "1", settle_seconds = {settle:g} }}

[accounts.coinvoyage-{suffix}]
provider = "coinvoyage"
base_url = "{base_url}/coinvoyage/v2"
{opt_in}options = {{ signature_scheme = "hmac_sha256_method_path_timestamp", settle_seconds = {settle:g} }}

[accounts.coinvoyage-{suffix}.secrets]
api_key = "file:coinvoyage_api_key"
api_secret = "file:coinvoyage_api_secret"
webhook_secret = "file:coinvoyage_webhook_secret"

[accounts.cryptomus-{suffix}]
provider = "cryptomus"
base_url = "{base_url}/cryptomus"
{opt_in}secrets = {{ api_key = "file:cryptomus_api_key" }}
options = {{ merchant = "{uuid.uuid4()}", is_subtract = true, settle_seconds = {settle:g} }}
"""
    path = directory / "accounts.toml"
    path.write_text(toml, encoding="utf-8")
    return path
