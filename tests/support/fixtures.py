"""Module-scoped fixture shapes that several integration modules share, written once.

A module names its fixture by the attribute it assigns (pytest takes the attribute's name)::

    broker = own_server("The Celery broker of this module's workers.")
    sentinel = module_context(local_sentinel, "A sentinel watching a master and its replica.")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def module_context(start: Callable[[], AbstractContextManager[T]], doc: str) -> Any:
    """A module-scoped fixture: ``start()`` entered for the module's first test that asks for
    it, left after its last one; the fixture's value is what the context yields."""

    def fixture() -> Iterator[T]:
        with start() as value:
            yield value

    fixture.__doc__ = doc
    return pytest.fixture(scope="module")(fixture)


def own_server(doc: str) -> Any:
    """A module-scoped fixture: the URL of one more embedded valkey server (the session's
    ``server_factory``, tests/integration/conftest.py), the module's own."""

    def fixture(server_factory: Callable[[], str]) -> str:
        return server_factory()

    fixture.__doc__ = doc
    return pytest.fixture(scope="module")(fixture)
