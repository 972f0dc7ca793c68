"""schemas.heap: the start-up heap leaves the collector's full walks."""

from __future__ import annotations

import gc

from schemas.heap import freeze_startup_heap


def test_everything_alive_is_frozen_and_a_full_walk_sees_only_what_came_after() -> None:
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 1000  # pytest and its plugins, at least
        assert len(gc.get_objects()) < frozen  # the walks see only objects made since
    finally:
        gc.unfreeze()
