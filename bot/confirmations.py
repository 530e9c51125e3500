"""Orders waiting for their owner's Confirm: a token per held order, valid once, for its owner
only, for a limited time (a stale Confirm must not place an order at today's prices)."""

from __future__ import annotations

import time

from dal.types import new_uid

CONFIRM_WITHIN = 600.0  # seconds a held order waits for its owner's Confirm


class Confirmations:
    def __init__(self, within: float = CONFIRM_WITHIN) -> None:
        self.within = within
        self._pending: dict[str, tuple[int, object, float]] = {}

    def hold(self, user_id: int, held: object) -> str:
        """Keep something (the orders a Confirm button stands for) waiting for its owner's
        confirmation; returns its token."""
        self._forget_stale()
        token = new_uid().replace("-", "")[:16]
        self._pending[token] = (user_id, held, time.monotonic())
        return token

    def release(self, user_id: int, token: str) -> object | None:
        """What is held for ``token`` if it is this user's and still fresh (once only)."""
        held = self._pending.get(token)
        if held is None or held[0] != user_id:
            return None
        del self._pending[token]
        if time.monotonic() - held[2] > self.within:
            return None
        return held[1]

    def _forget_stale(self) -> None:
        now = time.monotonic()
        for token in [t for t, (_, _, at) in self._pending.items() if now - at > self.within]:
            del self._pending[token]
