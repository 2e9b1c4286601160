"""The training methods, one file each, looked up by ``algorithm.name`` (``align.algorithms.base``)."""
