"""Filters: admin-only routers check the sender's row (refreshed on every update)."""

from __future__ import annotations

from typing import Any

from aiogram.filters import BaseFilter
from aiogram.types import TelegramObject


class IsAdmin(BaseFilter):
    async def __call__(self, event: TelegramObject, user: Any = None) -> bool:
        return bool(user is not None and user.is_admin and user.is_active)
