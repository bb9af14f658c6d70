"""The start-up heap is frozen once a process, after its garbage is collected."""

from __future__ import annotations

import gc
import weakref

import pytest

from app import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cycle collector can free it


def test_frozen_once_and_garbage_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_frozen", False)
    gc.unfreeze()
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    heap.freeze_startup_heap()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert gone() is None  # collected first, not frozen for the process's life
    kept = [Node() for _ in range(100)]
    heap.freeze_startup_heap()  # a second app in this process: nothing more is frozen
    assert gc.get_freeze_count() == frozen
    assert len(kept) == 100
