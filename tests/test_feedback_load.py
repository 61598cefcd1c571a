"""The load test of bench/feedback_load.py, small: concurrent annotators over HTTP against a real server
process that is killed with SIGKILL half-way, each trying to judge items others hold and sending every
judgment twice at once; no acknowledged judgment may be lost or stored twice, no item judged more than
`per_item` times, no theft accepted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench" / "feedback_load.py"


@pytest.mark.slow
def test_kill_9_theft_and_double_submits_keep_every_item_at_per_item(tmp_path):
    spec = importlib.util.spec_from_file_location("feedback_load", BENCH)
    load = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = load  # its dataclasses look their module up there
    spec.loader.exec_module(load)
    result = load.run_load(tmp_path, annotators=6, per_annotator=8, kill_after=20, per_item=2)
    check = result["check"]
    assert result["killed_after_acknowledged"] >= 20
    assert (check["stored"], check["acknowledged"], check["acknowledged_missing"]) == (48, 48, 0)
    assert (check["items_at_per_item"], check["items_over_per_item"]) == (24, 0)
    assert check["theft_attempts"] > 0 and check["theft_created"] == 0
    assert check["double_submits_stored_twice"] == 0 and check["passed"]
