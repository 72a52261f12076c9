"""invjax.passeurs."""
