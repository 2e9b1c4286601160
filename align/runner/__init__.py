"""The run: the trainer's loop, its actors, checkpoints, stop signals, kept actors and sweep jobs."""
