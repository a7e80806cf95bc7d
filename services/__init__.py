"""BentoML services: thin wiring over ``plantwatch`` (src never imports this package)."""
