"""The Telegram bot (aiogram 3)."""
