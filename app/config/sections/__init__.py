"""Settings sections, one module per area, nested in ``app.config.Settings``."""
