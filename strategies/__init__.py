"""Strategy runtime, gateways and paper trading."""
