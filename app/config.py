"""One Settings class, read by the API, the worker, the CLI and Alembic alike."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_HINT = "set DATABASE_URL and REDIS_URL, or run `stockout dev` for the embedded stack"


class Settings(BaseSettings):
    """The service's environment variables (README, Configuration), plus a few tuning knobs."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    database_url: str = ""
    redis_url: str = ""

    iamport_base_url: str = "https://api.iamport.kr"
    iamport_imp_key: SecretStr | None = None
    iamport_imp_secret: SecretStr | None = None
    iamport_timeout_seconds: float = Field(default=10.0, gt=0)
    iamport_max_rps: float = Field(default=20.0, gt=0)

    cancel_max_attempts: int = Field(default=8, ge=1)
    cancel_retry_base_seconds: float = Field(default=2.0, ge=0)
    cancel_retry_max_seconds: float = Field(default=300.0, ge=0)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    # How long iamport may still be working on a call whose answer we did not get.
    cancel_settle_seconds: float = Field(default=120.0, ge=0)
    on_paid: Literal["hold", "refund"] = "hold"
    # Runs in a row that learn nothing before a job fails with a plain error.
    job_max_idle_runs: int = Field(default=30, ge=1)

    iamport_webhook_token: SecretStr | None = None

    # A TOML file of merchant accounts (app/upstream/accounts.py); without it the IAMPORT_*
    # variables make the one account, `default`.
    accounts_file: str = ""

    # Signed webhooks to the order services.
    webhook_max_attempts: int = Field(default=12, ge=1)
    webhook_retry_base_seconds: float = Field(default=5.0, ge=0)
    webhook_retry_max_seconds: float = Field(default=36000.0, ge=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_allow_private_urls: bool = False

    # How long a published job may sit unclaimed before a sweep publishes it again: covers a
    # message lost with Redis or a publish that failed after the commit.
    dispatch_grace_seconds: float = Field(default=15.0, gt=0)
    # Job ids per Celery message: amortises the broker's per-message cost over several jobs.
    dispatch_batch_size: int = Field(default=50, ge=1, le=100)
    sweep_batch_size: int = Field(default=500, ge=1)
    # Seconds a Celery message may wait for the rate limiter before the job is re-scheduled.
    rate_limit_max_wait_seconds: float = Field(default=5.0, ge=0)
    # Reconciliation (worker beat's `reconcile`, `stockout reconcile`): look the open and
    # recently finished jobs' payments up in batches, within a share of each account's rate.
    reconcile_interval_seconds: float = Field(default=900.0, gt=0)
    reconcile_rps_share: float = Field(default=0.2, gt=0, le=1)
    reconcile_stale_seconds: float = Field(default=600.0, ge=0)
    reconcile_window_hours: float = Field(default=72.0, gt=0)
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("database_url")
    @classmethod
    def _psycopg_dialect(cls, value: str) -> str:
        # Both postgresql:// and postgresql+psycopg:// are accepted.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("iamport_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def libpq_url(self) -> str:
        """The database URL in the plain libpq form psycopg wants."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)

    @property
    def lease_seconds(self) -> float:
        """How long a claimed job stays ours: the one place the lease is derived.

        Every exchange with iamport ends by its total deadline (the timeout), and the lease is
        renewed just before each cancel or refund is sent; a call is sent only while at least
        `send_margin_seconds` of the lease are left, so it ends before anyone else may take
        the job. The rest is room for the database writes around it.
        """
        return self.lease_for(self.iamport_timeout_seconds)

    @property
    def send_margin_seconds(self) -> float:
        """The lease a worker must still hold, by its own clock, to send a cancel or refund."""
        return self.send_margin_for(self.iamport_timeout_seconds)

    def lease_for(self, timeout: float) -> float:
        """The lease of a job whose gateway calls each end within `timeout` seconds."""
        return 2 * timeout + 5

    def send_margin_for(self, timeout: float) -> float:
        """The lease left, by the worker's clock, needed to send a call of that timeout."""
        return timeout + 2

    def require_urls(self) -> None:
        """Fail with a clear message when the service is started without its backing stores."""
        missing = [
            n
            for n, v in (("DATABASE_URL", self.database_url), ("REDIS_URL", self.redis_url))
            if not v
        ]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not set: {EMBEDDED_HINT}")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
