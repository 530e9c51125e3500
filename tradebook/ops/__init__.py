"""Operations: copy SQLite → PostgreSQL, backups and restore, maintenance, verification, and
the bot's scheduled jobs. The `tradebook db …` commands are thin wrappers over these modules
(see docs/operations.md)."""


class OpsError(Exception):
    """An operation refused or failed; the message is one readable line for the operator."""
