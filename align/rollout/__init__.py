"""Between sampling and learning: batches for the learner, and asynchronous training's queue."""
