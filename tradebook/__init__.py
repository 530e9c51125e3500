"""tradebook: what spans the DAL, the bot and the strategies (settings, logging, the CLI)."""
