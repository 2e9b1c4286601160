"""Moved to ``align.config.schema`` (the library owns the config); this name keeps old imports working."""

import sys

from align.config import schema as _moved

sys.modules[__name__] = _moved
