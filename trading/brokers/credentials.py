"""Broker API keys: read from the environment or a secrets directory, never from the database.

For a broker account with ``account_uid`` U at broker B, the key and secret are looked up as
``TRADEBOOK_<B>_<U>_API_KEY`` / ``…_API_SECRET`` (environment; non-alphanumerics become
``_``) or as files of the same names, lower-cased (``tradebook_<b>_<u>_api_key``), in
``TRADEBOOK_SECRETS_DIR`` — pydantic-settings' ``secrets_dir``, as Docker and Kubernetes
secrets mount them. They are ``SecretStr`` everywhere: repr and logs show ``**********``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dal.errors import NotFound


@dataclass(frozen=True)
class Credentials:
    api_key: SecretStr
    api_secret: SecretStr


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def load_credentials(broker: str, account_uid: str, secrets_dir: Path) -> Credentials:
    """The API key pair of one broker account, or NotFound saying where it was looked for."""
    prefix = f"{_slug(broker)}_{_slug(account_uid)}".lower()

    class _Keys(BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix=f"TRADEBOOK_{prefix}_",
            secrets_dir=secrets_dir if secrets_dir.is_dir() else None,
            extra="ignore",
            case_sensitive=False,
        )
        api_key: SecretStr | None = None
        api_secret: SecretStr | None = None

    keys = _Keys()
    if keys.api_key is None or keys.api_secret is None:
        env = f"TRADEBOOK_{prefix.upper()}_API_KEY"
        raise NotFound(
            f"no API key for {broker} account {account_uid}: set {env} and …_API_SECRET, or "
            f"put tradebook_{prefix}_api_key and …_api_secret files in {secrets_dir}"
        )
    from tradebook.logs import register_secret

    register_secret(keys.api_key.get_secret_value())  # redacted from every log line
    register_secret(keys.api_secret.get_secret_value())
    return Credentials(keys.api_key, keys.api_secret)
