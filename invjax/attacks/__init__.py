"""invjax.attacks."""
