"""The merchant accounts: one set of gateway credentials each, from ACCOUNTS_FILE or IAMPORT_*.

Without ACCOUNTS_FILE the IAMPORT_* variables make one v1 account, `default`. With it, the
file's `[accounts.NAME]` tables are the accounts. Every secret in the file is a reference, a
variable (`NAME_env`) or a path (`NAME_file`), resolved here and nowhere else; a resolved
secret is a SecretStr, so no repr shows it. A bad file is one AccountsError whose message is
one line naming the account and the field, never a secret's value.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from standardwebhooks.webhooks import Webhook

from app.kit.errors import UnknownAccount

if TYPE_CHECKING:
    from app.config import Settings

DEFAULT = "default"
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
V2_BASE_URL = "https://api.portone.io"
# PortOne recommends read timeouts of at least 60 s for V2: it goes on with PG-backed calls
# after the client hangs up, so a shorter one only turns answers into unknowns.
V2_TIMEOUT_SECONDS = 60.0
Api = Literal["v1", "v2"]
OnPaid = Literal["hold", "refund"]

# The secrets of each api: (name, required). The file names each as NAME_env or NAME_file.
SECRETS: dict[str, tuple[tuple[str, bool], ...]] = {
    "v1": (("imp_secret", True), ("webhook_token", False)),
    "v2": (("api_secret", True), ("webhook_secret", False)),
}
ONLY: dict[str, frozenset[str]] = {
    "v1": frozenset(
        {"imp_key", "tier", *(f"{s}_{how}" for s, _ in SECRETS["v1"] for how in ("env", "file"))}
    ),
    "v2": frozenset(
        {"store_id", *(f"{s}_{how}" for s, _ in SECRETS["v2"] for how in ("env", "file"))}
    ),
}


_loaded: tuple[Settings, dict[str, Account]] | None = None


def accounts_of(settings: Settings) -> dict[str, Account]:
    """The accounts of these settings, loaded once (a process checks them at start, so a
    problem here is one the start-up check would have stopped it for)."""
    global _loaded
    loaded = _loaded
    if loaded is None or loaded[0] is not settings:
        loaded = _loaded = (settings, load_accounts(settings))
    return loaded[1]


def require_account(settings: Settings, name: str) -> Account:
    """The configured account of that name, or UnknownAccount (422)."""
    found = accounts_of(settings).get(name)
    if found is None:
        raise UnknownAccount(f"no account {name} is configured")
    return found


def require_runnable(settings: Settings, name: str) -> Account:
    """The configured account whose jobs the workers can run, or UnknownAccount (422): every
    configured account, of either kind."""
    return require_account(settings, name)


def leases(settings: Settings) -> dict[str, float]:
    """Each account's job lease: long enough for its own calls' timeout."""
    return {
        name: settings.lease_for(a.timeout_seconds) for name, a in accounts_of(settings).items()
    }


class AccountsError(Exception):
    """The accounts cannot be loaded; the message is one line and names no secret's value."""


@dataclass(frozen=True)
class Secret:
    """A secret as referenced (`source`), with its value when it resolved, else the problem."""

    source: str
    value: SecretStr | None = None
    problem: str | None = None

    @property
    def resolves(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class Account:
    """One set of gateway credentials and what goes with them."""

    name: str
    api: Api
    base_url: str
    max_rps: float
    on_paid: OnPaid
    # Each call's total deadline: IAMPORT_TIMEOUT_SECONDS for v1, 60 s for v2 by default.
    timeout_seconds: float = 10.0
    imp_key: SecretStr | None = None  # v1
    tier: str | None = None  # v1: an agency's sub-merchant
    store_id: str | None = None  # v2
    secrets: dict[str, Secret] = field(default_factory=dict)

    def secret(self, name: str) -> str | None:
        """A secret's value, or None when it is not configured or does not resolve."""
        found = self.secrets.get(name)
        return None if found is None or found.value is None else found.value.get_secret_value()


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_rps: float | None = Field(default=None, gt=0)
    timeout_seconds: float | None = Field(default=None, gt=0)
    base_url: str | None = None
    on_paid: OnPaid | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return None if value is None else value.rstrip("/")


class _V1(_Common):
    api: Literal["v1"]
    imp_key: str = Field(min_length=1)
    imp_secret_env: str | None = None
    imp_secret_file: str | None = None
    tier: str | None = Field(default=None, pattern=r"^[A-Z0-9]{3}$")
    webhook_token_env: str | None = None
    webhook_token_file: str | None = None


class _V2(_Common):
    api: Literal["v2"]
    store_id: str = Field(min_length=1)
    api_secret_env: str | None = None
    api_secret_file: str | None = None
    webhook_secret_env: str | None = None
    webhook_secret_file: str | None = None


def load_accounts(settings: Settings) -> dict[str, Account]:
    """Every account, each secret resolved; AccountsError on the first problem."""
    accounts = read_accounts(settings)
    if not settings.accounts_file:
        return accounts
    where = _where(settings.accounts_file)
    for account in accounts.values():
        for name, secret in account.secrets.items():
            if secret.problem is not None:
                raise AccountsError(f"{where}: account {account.name}: {name}: {secret.problem}")
    for account in accounts.values():
        rotation = account.secret("webhook_secret")
        for one in (rotation or "").split(","):
            if one.strip() and not _standard_webhooks_secret(one.strip()):
                raise AccountsError(
                    f"{where}: account {account.name}: webhook_secret: not a Standard Webhooks "
                    "secret (whsec_ and base64), or a comma-separated list of them"
                )
    tokens: dict[str, str] = {}
    for account in accounts.values():
        token = account.secret("webhook_token")
        if token is None:
            continue
        if token in tokens:
            raise AccountsError(
                f"{where}: account {account.name}: webhook_token: the same token as account "
                f"{tokens[token]}'s; each account needs its own"
            )
        tokens[token] = account.name
    return accounts


def read_accounts(settings: Settings) -> dict[str, Account]:
    """The accounts as configured, secrets resolved where they can be (a Secret says why not).

    AccountsError for a file that cannot be read or is not a valid accounts file; a secret
    that does not resolve is left for the caller (`load_accounts` refuses it; `stockout
    accounts list` shows it).
    """
    if not settings.accounts_file:
        return {DEFAULT: default_account(settings)}
    path = Path(settings.accounts_file)
    where = _where(settings.accounts_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountsError(f"{where}: cannot be read ({_why(exc)})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AccountsError(f"{where}: not TOML: {exc}") from None
    unknown = sorted(k for k in document if k != "accounts")
    if unknown:
        raise AccountsError(f"{where}: unknown key {unknown[0]}: only [accounts.NAME] tables")
    tables = document.get("accounts")
    if not isinstance(tables, dict) or not tables:
        raise AccountsError(f"{where}: names no account: add an [accounts.NAME] table")
    return {name: _account(where, name, raw, settings) for name, raw in tables.items()}


def default_account(settings: Settings) -> Account:
    """The one v1 account the IAMPORT_* variables make."""
    secrets = {"imp_secret": _setting("IAMPORT_IMP_SECRET", settings.iamport_imp_secret)}
    token = settings.iamport_webhook_token
    if token is not None and token.get_secret_value():
        secrets["webhook_token"] = _setting("IAMPORT_WEBHOOK_TOKEN", token)
    return Account(
        name=DEFAULT,
        api="v1",
        base_url=settings.iamport_base_url,
        max_rps=settings.iamport_max_rps,
        on_paid=settings.on_paid,
        timeout_seconds=settings.iamport_timeout_seconds,
        imp_key=settings.iamport_imp_key,
        secrets=secrets,
    )


def _setting(variable: str, value: SecretStr | None) -> Secret:
    if value is None or not value.get_secret_value():
        return Secret(variable, problem=f"{variable} is not set")
    return Secret(variable, value=value)


def _account(where: str, name: str, raw: Any, settings: Settings) -> Account:
    prefix = f"{where}: account {name}"
    if not NAME.fullmatch(name):
        raise AccountsError(
            f"{prefix}: name: must be lower-case letters, digits and '-', "
            "starting with a letter or digit, at most 40 characters"
        )
    if not isinstance(raw, dict):
        raise AccountsError(f"{prefix}: must be a table of fields")
    api = raw.get("api")
    if api not in ("v1", "v2"):
        what = "missing" if "api" not in raw else 'must be "v1" or "v2"'
        raise AccountsError(f"{prefix}: api: {what}")
    other = "v2" if api == "v1" else "v1"
    for key in raw:
        if key in ONLY[other]:
            raise AccountsError(f"{prefix}: {key}: a {other} field, not allowed on a {api} account")
        if key in {s for s, _ in SECRETS[api]}:
            raise AccountsError(
                f"{prefix}: {key}: a secret is given by reference only: {key}_env (a variable) "
                f"or {key}_file (a path)"
            )
    model: type[_V1] | type[_V2] = _V1 if api == "v1" else _V2
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        raise AccountsError(f"{prefix}: {_first_error(exc)}") from None
    secrets: dict[str, Secret] = {}
    for secret, required in SECRETS[api]:
        variable = getattr(parsed, f"{secret}_env")
        file = getattr(parsed, f"{secret}_file")
        if variable is not None and file is not None:
            raise AccountsError(f"{prefix}: {secret}: give {secret}_env or {secret}_file, not both")
        if variable is not None:
            secrets[secret] = _from_env(variable)
        elif file is not None:
            secrets[secret] = _from_file(file)
        elif required:
            raise AccountsError(f"{prefix}: {secret}: missing: give {secret}_env or {secret}_file")
    if isinstance(parsed, _V1):
        return Account(
            name=name,
            api="v1",
            base_url=parsed.base_url or settings.iamport_base_url,
            max_rps=parsed.max_rps or settings.iamport_max_rps,
            on_paid=parsed.on_paid or settings.on_paid,
            timeout_seconds=parsed.timeout_seconds or settings.iamport_timeout_seconds,
            imp_key=SecretStr(parsed.imp_key),
            tier=parsed.tier,
            secrets=secrets,
        )
    return Account(
        name=name,
        api="v2",
        base_url=parsed.base_url or V2_BASE_URL,
        max_rps=parsed.max_rps or settings.iamport_max_rps,
        on_paid=parsed.on_paid or settings.on_paid,
        timeout_seconds=parsed.timeout_seconds or V2_TIMEOUT_SECONDS,
        store_id=parsed.store_id,
        secrets=secrets,
    )


def _from_env(variable: str) -> Secret:
    source = f"variable {variable}"
    value = os.environ.get(variable, "")
    if not value:
        return Secret(source, problem=f"{source} is not set")
    return Secret(source, value=SecretStr(value))


def _from_file(path: str) -> Secret:
    source = f"file {path}"
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return Secret(source, problem=f"{source} cannot be read ({_why(exc)})")
    if not value:
        return Secret(source, problem=f"{source} is empty")
    return Secret(source, value=SecretStr(value))


def _standard_webhooks_secret(secret: str) -> bool:
    try:
        Webhook(secret)
    except Exception:  # the library raises several kinds for a secret it cannot decode
        return False
    return True


def _first_error(exc: ValidationError) -> str:
    """The first of pydantic's errors as `field: what is wrong`, without the input's value."""
    error = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    name = ".".join(str(part) for part in error["loc"]) or "account"
    if error["type"] == "extra_forbidden":
        return f"{name}: unknown field"
    if error["type"] == "missing":
        return f"{name}: missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{name}: {message}"


def _where(path: str) -> str:
    return f"ACCOUNTS_FILE {path}"


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
