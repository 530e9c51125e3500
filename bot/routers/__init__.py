"""One router per feature; each module's ``router()`` builds a fresh one (a router can have
only one parent, so every Dispatcher gets its own)."""
