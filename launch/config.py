"""Moved to ``align.config.loading`` (the library owns the config); this name keeps old imports working."""

import sys

from align.config import loading as _moved

sys.modules[__name__] = _moved
