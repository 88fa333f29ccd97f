"""Quantities as a person reads them in tables and messages (``23.5Gi``, not
``24683792Ki``); ``--json`` keeps the API's exact text.

The formatter lives in ``core/resources.py`` beside the exact one; it is
imported when a table is drawn, so that a short command with ``--json``
does not pay for ``apportion.core`` (tests/cli/test_imports.py).
"""

from __future__ import annotations

from collections.abc import Mapping


def human(resource: str, value: object) -> str:
    from apportion.core.resources import human_quantity

    return human_quantity(resource, value)


def human_vector(vector: Mapping[str, object]) -> str:
    from apportion.core.resources import human_vector as text

    return text(vector)
