"""invjax.flows."""
