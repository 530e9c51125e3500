"""Example strategies; ``REGISTRY`` maps a strategy name to its class."""

from strategies.examples.sma_cross import SmaCross

REGISTRY = {SmaCross.name: SmaCross}
