"""What a run reports: metrics (JSONL, plots, startup) and the experiment trackers."""
