"""The load test of bench/feedback_load.py, small: concurrent annotators over HTTP against a real server
process that is killed with SIGKILL half-way; no acknowledged judgment may be lost or stored twice."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench" / "feedback_load.py"


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_judgment_and_stores_each_once(tmp_path):
    spec = importlib.util.spec_from_file_location("feedback_load", BENCH)
    load = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = load  # its dataclasses look their module up there
    spec.loader.exec_module(load)
    result = load.run_load(tmp_path, annotators=6, per_annotator=8, kill_after=20)
    check = result["check"]
    assert result["killed_after_acknowledged"] >= 20
    assert (check["stored"], check["acknowledged"], check["acknowledged_missing"]) == (48, 48, 0)
    assert (check["items_judged_once"], check["items_judged_more"]) == (48, 0)
