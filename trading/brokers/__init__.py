"""Broker adapters: pure mappings from what a broker sends to ``trading.events``.

Each module here turns one broker's payloads into broker-neutral ``OrderUpdate`` and
``FillEvent`` values. No network and no database: the gateway feeds payloads in, the runtime
applies the events through the DAL.
"""
