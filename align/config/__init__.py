"""The run configuration, owned by the library: the typed schema (``align.config.schema``) and
loading, ``--set`` overrides, validation messages and the resolved copy (``align.config.loading``).

The command line (``launch``) reads configs through this package; the library never imports ``launch``.
"""

from align.config.loading import ConfigError, load_config, save_resolved
from align.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "save_resolved"]
