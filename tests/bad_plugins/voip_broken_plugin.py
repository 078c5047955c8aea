"""An installed plugin that cannot be imported (its dependency is missing)."""

import numpyy  # noqa: F401
