"""Structured logs carry the request and job ids in scope."""

from __future__ import annotations

import json
import logging

from shared.telemetry import JsonFormatter, job_id_var, request_id_var


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_lines_carry_context_ids() -> None:
    fmt = JsonFormatter()
    plain = json.loads(fmt.format(record("hello")))
    assert plain["msg"] == "hello" and "request_id" not in plain and "job_id" not in plain
    req = request_id_var.set("req-1")
    job = job_id_var.set("job_9")
    try:
        line = json.loads(fmt.format(record("working", fields={"stage": "training"})))
    finally:
        request_id_var.reset(req)
        job_id_var.reset(job)
    assert (line["request_id"], line["job_id"], line["stage"]) == ("req-1", "job_9", "training")
    assert line["level"] == "info" and line["ts"].endswith("+00:00")
