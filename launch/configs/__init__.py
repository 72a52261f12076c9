"""ml_collections experiment configs; each docstring holds its exact launch command."""
