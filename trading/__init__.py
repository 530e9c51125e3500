"""Trading: the order desk, broker gateways and events, market data and the paper broker."""
