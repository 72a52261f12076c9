"""absl launch scripts (`python -m launch.<script> --config=launch/configs/<config>.py`)."""
