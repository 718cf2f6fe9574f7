"""Hypothesis profiles: the same examples on every run by default, fresh ones on request.

``ci`` (the default) derandomises the property tests, so a red run means the change under
test broke something, not that a new random draw found an old bug. ``explore``
(``HYPOTHESIS_PROFILE=explore python -m pytest tests/unit [--hypothesis-seed N]``) draws new
examples on each run: run it to look for bugs, and keep what it finds as an ``@example``.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
