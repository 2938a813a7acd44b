"""Exceptions that LiSER raises on purpose: :mod:`liser_common.errors`, under the name plugins
have always imported them by."""

from liser_common.errors import *  # noqa: F403
from liser_common.errors import __all__  # noqa: F401
