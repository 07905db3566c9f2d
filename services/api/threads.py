"""Worker-thread budgets kept apart from the default one that sync routes and dependencies use.

Returning a database connection must never wait for a thread that is itself waiting for a
connection (pool exhausted + thread pool full = deadlock), and long uploads must not starve
quick requests, so each of those gets a limiter of its own.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

BUDGETS = {"upload": 16, "release": 8}

# One limiter per event loop and budget: anyio's primitives bind to the loop that first waits.
_limiters: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, anyio.CapacityLimiter]
] = weakref.WeakKeyDictionary()


def _limiter(budget: str) -> anyio.CapacityLimiter:
    per_loop = _limiters.setdefault(asyncio.get_running_loop(), {})
    if budget not in per_loop:
        per_loop[budget] = anyio.CapacityLimiter(BUDGETS[budget])
    return per_loop[budget]


async def run_in_budget(budget: str, func: Callable[[], T]) -> T:
    """Run a blocking call in a worker thread counted against `budget`."""
    return await anyio.to_thread.run_sync(func, limiter=_limiter(budget))
