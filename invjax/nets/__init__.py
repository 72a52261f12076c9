"""invjax.nets."""
