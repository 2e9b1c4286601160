"""Writing to disk safely: checkpoints and built folders, atomically."""
