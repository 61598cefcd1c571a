"""Load test of the feedback app: N concurrent annotators judging over HTTP (loopback) until the queue is empty.

The server runs as `rlhfkit serve` in its own process on a fresh SQLite store with one pairwise project of
N·M/per_item items. Each simulated annotator signs in, then loops: fetch its next item, try to judge an item
another annotator holds right now (lease theft: must be refused with 409), then submit its own judgment twice
at once from two threads (a double click racing itself: exactly one 201), until no item is left for it.
With `--kill-after K`, the server is killed with SIGKILL once K judgments are acknowledged and restarted;
annotators retry through the outage. At the end every acknowledged judgment must be in the store, every item
must hold exactly `per_item` judgments, no theft may have been accepted and no double submit stored twice.

What it proves: acknowledged judgments survive a kill of the server process (committed before the answer;
a kill -9 does not test fsync against a power cut: see synchronous=FULL in store/base.py), leases and the
slot constraints hold `per_item` under concurrent annotators, thieves and double submits.

    python bench/feedback_load.py                       # 20 annotators x 50 judgments, per_item 1
    python bench/feedback_load.py --kill-after 500      # the same, with a kill -9 half-way
    python bench/feedback_load.py --per-item 3          # three annotators per item
    python bench/feedback_load.py --db postgresql+psycopg://USER:PW@HOST/EMPTY_DB    # on PostgreSQL

Writes bench/results/feedback_load.json (or --output): judgments per second, latencies, the checks.
No peer is measured: no other labelling tool runs offline here, so this is a bare rate with its checks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median, quantiles

import httpx

from rlhfkit.data.readers import Row
from rlhfkit.feedback.store import Store

PASSWORD = "load-test-password"


@dataclass
class Shared:
    acknowledged: list[tuple[str, int]] = field(default_factory=list)  # (annotator, item id)
    latencies: list[float] = field(default_factory=list)  # seconds per double submit (two requests at once)
    held: dict[str, int] = field(default_factory=dict)  # annotator -> the item they hold now
    thefts: list[int] = field(default_factory=list)  # status of each attempt on another's item
    double_created: int = 0  # double submits that stored twice (both 201)
    lock: threading.Lock = field(default_factory=threading.Lock)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(db: str, annotators: int, per_annotator: int, per_item: int) -> list[str]:
    store = Store(db)
    names = [f"annotator{i:02d}" for i in range(annotators)]
    for name in names:
        store.add_user(name, PASSWORD)
    items = [
        Row(f"load:{i + 1}", {"prompt": f"prompt {i}", "responses": [f"reply a{i}", f"reply b{i}"]})
        for i in range(annotators * per_annotator // per_item)
    ]
    store.create_project("load", "pairwise", per_item=per_item, rows=items)
    store.assign("load", names)
    store.engine.dispose()
    return names


def start_server(db: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "rlhfkit", "serve", "--db", db, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
            return server
        except httpx.TransportError:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited: {server.stderr.read()}") from None
            time.sleep(0.2)
    raise RuntimeError("the server did not start within 120 s")


def annotate(base: str, name: str, shared: Shared) -> None:
    """Sign in and judge items until none is left, trying to steal others' items on the way; retries
    through server restarts."""
    with httpx.Client(base_url=base, timeout=30) as client:
        csrf = retry(lambda: client.post("/api/login", json={"name": name, "password": PASSWORD})).json()["csrf"]
        headers = {"X-CSRF-Token": csrf}

        def judge(item_id: int) -> httpx.Response:
            return retry(lambda: client.post(f"/api/items/{item_id}", json={"choice": "A:2"}, headers=headers))

        while True:
            item = retry(lambda: client.get("/api/projects/1/next")).json()["item"]
            if item is None:
                return
            with shared.lock:
                shared.held[name] = item["id"]
                others = [i for other, i in shared.held.items() if other != name and i != item["id"]]
            if others:
                stolen = judge(others[0])
                with shared.lock:
                    shared.thefts.append(stolen.status_code)
            started = time.perf_counter()
            twice: list[httpx.Response] = []
            second = threading.Thread(target=lambda i=item["id"], out=twice: out.append(judge(i)))  # the double click
            second.start()
            twice.append(judge(item["id"]))
            second.join()
            for response in twice:
                response.raise_for_status()
            with shared.lock:
                shared.held.pop(name, None)
                shared.double_created += [r.status_code for r in twice].count(201) > 1
                shared.latencies.append(time.perf_counter() - started)
                shared.acknowledged.append((name, item["id"]))


def retry(request, attempts: int = 600):
    """The request's response, retried every 0.2 s while the server is down (connection refused or reset)."""
    for _ in range(attempts):
        try:
            return request()
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the server stayed down")


def check(db: str, shared: Shared, items: int, per_item: int) -> dict:
    store = Store(db)
    rows = store.judgments("load")
    stored = {(row.annotator, row.item.id) for row in rows}
    counts = Counter(row.item.id for row in rows)
    theft_created = shared.thefts.count(201)
    return {
        "stored": len(rows),
        "acknowledged": len(shared.acknowledged),
        "acknowledged_missing": len(set(shared.acknowledged) - stored),
        "items": items,
        "items_at_per_item": sum(n == per_item for n in counts.values()),
        "items_over_per_item": sum(n > per_item for n in counts.values()),
        "theft_attempts": len(shared.thefts),
        "theft_refused_409": shared.thefts.count(409),
        "theft_created": theft_created,
        "double_submits_stored_twice": shared.double_created,
        "passed": len(rows) == items * per_item
        and stored >= set(shared.acknowledged)
        and all(n == per_item for n in counts.values())
        and theft_created == 0
        and shared.double_created == 0,
    }


def run_load(
    workdir: Path,
    annotators: int,
    per_annotator: int,
    kill_after: int | None,
    db: str | None = None,
    per_item: int = 1,
) -> dict:
    db = db or f"sqlite:///{workdir / 'load.db'}"
    names = prepare(db, annotators, per_annotator, per_item)
    port = free_port()
    server = start_server(db, port)
    shared = Shared()
    threads = [threading.Thread(target=annotate, args=(f"http://127.0.0.1:{port}", n, shared)) for n in names]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    killed_at = None
    if kill_after is not None:
        while len(shared.acknowledged) < kill_after:
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        killed_at = len(shared.acknowledged)
        server = start_server(db, port)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    server.terminate()
    server.wait()
    cuts = quantiles(shared.latencies, n=100)
    return {
        "store": db.split(":", 1)[0],
        "annotators": annotators,
        "judgments_per_annotator": per_annotator,
        "per_item": per_item,
        "killed_after_acknowledged": killed_at,
        "seconds": elapsed,
        "judgments_per_second": len(shared.acknowledged) / elapsed,
        "double_submit_latency_ms": {"median": 1000 * median(shared.latencies), "p95": 1000 * cuts[94]},
        "check": check(db, shared, annotators * per_annotator // per_item, per_item),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--judgments", type=int, default=50, help="judgments per annotator")
    parser.add_argument("--per-item", type=int, default=1, help="annotators per item")
    parser.add_argument("--kill-after", type=int, default=None, help="SIGKILL the server after K acknowledgements")
    parser.add_argument("--db", default=None, help="an empty database's URL (default: a new SQLite file in --workdir)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-feedback"))
    parser.add_argument("--output", type=Path, default=Path("bench/results/feedback_load.json"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "load.db").unlink(missing_ok=True)
    result = run_load(args.workdir, args.annotators, args.judgments, args.kill_after, args.db, args.per_item)
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    if not result["check"]["passed"]:
        raise SystemExit("FAILED: a judgment was lost or stored twice, an item over-judged, or a theft accepted")


if __name__ == "__main__":
    main()
