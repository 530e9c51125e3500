"""Strategies: the Strategy base, its context, the runtime that schedules them, examples."""
