"""Load test of the feedback app: N concurrent annotators submitting M judgments each over HTTP (loopback).

The server runs as `rlhfkit serve` in its own process on a fresh SQLite store with one pairwise project of
N·M items, one annotator per item. Each simulated annotator signs in, then loops: fetch its next item,
submit a judgment (sent twice, like a double click: it must be stored once), until M are acknowledged.
With `--kill-after K`, the server is killed with SIGKILL once K judgments are acknowledged and restarted;
annotators retry through the outage. At the end every acknowledged judgment must be in the store, and
every item judged exactly once.

    python bench/feedback_load.py                       # 20 annotators x 50 judgments
    python bench/feedback_load.py --kill-after 500      # the same, with a kill -9 half-way
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
    latencies: list[float] = field(default_factory=list)  # seconds per submit request
    lock: threading.Lock = field(default_factory=threading.Lock)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(db: str, annotators: int, per_annotator: int) -> list[str]:
    store = Store(db)
    names = [f"annotator{i:02d}" for i in range(annotators)]
    for name in names:
        store.add_user(name, PASSWORD)
    items = [
        Row(f"load:{i + 1}", {"prompt": f"prompt {i}", "responses": [f"reply a{i}", f"reply b{i}"]})
        for i in range(annotators * per_annotator)
    ]
    store.create_project("load", "pairwise", per_item=1, rows=items)
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


def annotate(base: str, name: str, count: int, shared: Shared) -> None:
    """Sign in and judge `count` items, retrying through server restarts."""
    with httpx.Client(base_url=base, timeout=30) as client:
        csrf = retry(lambda: client.post("/api/login", json={"name": name, "password": PASSWORD})).json()["csrf"]
        done = 0
        while done < count:
            item = retry(lambda: client.get("/api/projects/1/next")).json()["item"]
            if item is None:
                return
            started = time.perf_counter()
            for _ in range(2):  # the second send is the double click: acknowledged, not stored again
                response = retry(
                    lambda i=item: client.post(
                        f"/api/items/{i['id']}", json={"choice": "A:2"}, headers={"X-CSRF-Token": csrf}
                    )
                )
                response.raise_for_status()
            with shared.lock:
                shared.latencies.append((time.perf_counter() - started) / 2)
                shared.acknowledged.append((name, item["id"]))
            done += 1


def retry(request, attempts: int = 600):
    """The request's response, retried every 0.2 s while the server is down (connection refused or reset)."""
    for _ in range(attempts):
        try:
            return request()
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the server stayed down")


def check(db: str, shared: Shared, items: int) -> dict:
    store = Store(db)
    rows = store.judgments("load")
    stored = {(row.annotator, row.item.id) for row in rows}
    per_item: dict[int, int] = {}
    for row in rows:
        per_item[row.item.id] = per_item.get(row.item.id, 0) + 1
    return {
        "stored": len(rows),
        "acknowledged": len(shared.acknowledged),
        "acknowledged_missing": len(set(shared.acknowledged) - stored),
        "items_judged_once": sum(n == 1 for n in per_item.values()),
        "items_judged_more": sum(n > 1 for n in per_item.values()),
        "items": items,
        "passed": len(rows) == items == len(per_item)
        and stored >= set(shared.acknowledged)
        and all(n == 1 for n in per_item.values()),
    }


def run_load(workdir: Path, annotators: int, per_annotator: int, kill_after: int | None, db: str | None = None) -> dict:
    db = db or f"sqlite:///{workdir / 'load.db'}"
    names = prepare(db, annotators, per_annotator)
    port = free_port()
    server = start_server(db, port)
    shared = Shared()
    threads = [
        threading.Thread(target=annotate, args=(f"http://127.0.0.1:{port}", n, per_annotator, shared)) for n in names
    ]
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
        "killed_after_acknowledged": killed_at,
        "seconds": elapsed,
        "judgments_per_second": len(shared.acknowledged) / elapsed,
        "submit_latency_ms": {"median": 1000 * median(shared.latencies), "p95": 1000 * cuts[94]},
        "check": check(db, shared, annotators * per_annotator),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--judgments", type=int, default=50, help="judgments per annotator")
    parser.add_argument("--kill-after", type=int, default=None, help="SIGKILL the server after K acknowledgements")
    parser.add_argument("--db", default=None, help="an empty database's URL (default: a new SQLite file in --workdir)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-feedback"))
    parser.add_argument("--output", type=Path, default=Path("bench/results/feedback_load.json"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "load.db").unlink(missing_ok=True)
    result = run_load(args.workdir, args.annotators, args.judgments, args.kill_after, args.db)
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    if not result["check"]["passed"]:
        raise SystemExit("FAILED: a judgment was lost or stored twice")


if __name__ == "__main__":
    main()
