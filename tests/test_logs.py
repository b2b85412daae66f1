"""Structured logs: each line is one JSON object, and a decision carries its reason."""

from __future__ import annotations

import io
import json
import logging

from nfvha.logs import JsonFormatter, decision


def _capture() -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("nfvha.test-logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, buf


def test_decision_is_one_json_line_with_reason_and_fields() -> None:
    logger, buf = _capture()
    decision(logger, "recover", 'process-exit fm -> restore-local on h1 ("quoted")',
             reason="checkpoint 3 is on h1", vnf="fm", host="h1", strategy="restore-local")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["level"] == "INFO" and rec["logger"] == "nfvha.test-logs"
    assert rec["message"].startswith("decision: process-exit fm")
    assert rec["decision"] == "recover" and rec["reason"] == "checkpoint 3 is on h1"
    assert (rec["vnf"], rec["host"], rec["strategy"]) == ("fm", "h1", "restore-local")
    assert rec["time"].endswith("Z")


def test_exceptions_stay_inside_the_json_line() -> None:
    logger, buf = _capture()
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logger.exception("it failed")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert "ValueError: bad" in rec["exception"] and rec["level"] == "ERROR"
