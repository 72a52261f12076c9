"""invjax.robust."""
