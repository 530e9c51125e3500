"""The peer bench (`make bench-peers`): the DAL against freqtrade's persistence pattern."""
