"""A render batch rides through Triton being away for a while, and fails clearly after."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from services.renderer.backends import (
    RenderBackendError,
    TritonBackend,
    is_transient,
    retry_transient,
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_transient_failures_are_retried_until_the_call_goes_through() -> None:
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "Connection refused")
        return "frames"

    assert retry_transient(flaky, budget_s=10, what="test", backoff_s=0.05) == "frames"
    assert len(calls) == 3
    assert calls[2] - calls[1] >= 2 * (calls[1] - calls[0]) * 0.8  # the backoff doubles


def test_a_permanent_failure_is_not_retried() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("input 'pose' has the wrong shape")

    with pytest.raises(ValueError):
        retry_transient(broken, budget_s=10, what="test", backoff_s=0.05)
    assert calls == [1]
    assert is_transient(ConnectionResetError()) and not is_transient(ValueError("bad dims"))


def test_an_absent_server_fails_with_a_clear_error_after_the_budget() -> None:
    backend = TritonBackend(f"127.0.0.1:{_closed_port()}", retry_s=1.0, timeout_s=2.0)
    inputs = {"pose": np.zeros((2, 4, 4), np.float32)}
    started = time.monotonic()
    with pytest.raises(RenderBackendError, match="radnerf"):
        backend.render("av_x", "radnerf", inputs)
    took = time.monotonic() - started
    assert 0.4 <= took < 8.0  # retried within the budget, then gave up
    backend.close()
