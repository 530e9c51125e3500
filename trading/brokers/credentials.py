"""Exchange API keys: read from the environment or a secrets directory, never from the database.

The keys of the exchange account with id N (``/account`` shows it) are
``TRADEBOOK_ACCOUNT_<N>_API_KEY`` / ``…_API_SECRET`` in the environment, or files of those
names, lower-cased (``tradebook_account_<N>_api_key``), in ``TRADEBOOK_SECRETS_DIR`` —
pydantic-settings' ``secrets_dir``, as Docker and Kubernetes secrets mount them. The name
comes from the account's id, which its owner cannot choose, and the account row passed in
was read through its owner's scope, so one user can never name another's keys. They are
``SecretStr`` everywhere and registered with the log scrubber the moment they are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dal.errors import NotFound


@dataclass(frozen=True)
class Credentials:
    api_key: SecretStr
    api_secret: SecretStr


def key_names(account_id: int) -> tuple[str, str]:
    """The environment names of an account's key and secret."""
    return f"TRADEBOOK_ACCOUNT_{account_id}_API_KEY", f"TRADEBOOK_ACCOUNT_{account_id}_API_SECRET"


def where_keys_go(account: Any, secrets_dir: Path) -> str:
    key, secret = key_names(account.id)
    return (
        f"set {key} and {secret} in the environment, or put files named "
        f"{key.lower()} and {secret.lower()} in {secrets_dir}"
    )


def load_credentials(account: Any, secrets_dir: Path) -> Credentials:
    """The API key pair of an account row (read through its owner's scope), or NotFound
    saying where to put it."""
    if not isinstance(account.id, int) or isinstance(account.id, bool):
        raise TypeError("load_credentials takes an accounts row")

    class _Keys(BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix=f"TRADEBOOK_ACCOUNT_{account.id}_",
            secrets_dir=secrets_dir if secrets_dir.is_dir() else None,
            extra="ignore",
            case_sensitive=False,
        )
        api_key: SecretStr | None = None
        api_secret: SecretStr | None = None

    keys = _Keys()
    if not keys.api_key or not keys.api_secret:
        raise NotFound(
            f"no API key for account {account.name!r}: {where_keys_go(account, secrets_dir)}"
        )
    from tradebook.logs import register_secret

    register_secret(keys.api_key.get_secret_value())  # redacted from every log line
    register_secret(keys.api_secret.get_secret_value())
    return Credentials(keys.api_key, keys.api_secret)
