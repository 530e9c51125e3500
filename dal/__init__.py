"""Data-access layer: schema, portable types, engines and the user-scoped services."""
