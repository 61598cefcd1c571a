"""The feedback store and app: migrations, imports, leases, judgments, agreement, consensus, export, security."""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections import Counter
from importlib.resources import files
from pathlib import Path

import pytest
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from rlhfkit.cli import app as cli_app
from rlhfkit.data.readers import DataError, Row
from rlhfkit.data.records import load_records
from rlhfkit.feedback import chat
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.export import export_records, write_records
from rlhfkit.feedback.schema import Item, Judgment
from rlhfkit.feedback.settings import AppSettings
from rlhfkit.feedback.stats import krippendorff_alpha, pairwise_agreement, project_stats
from rlhfkit.feedback.store import Conflict, Store, StoreError, open_engine
from rlhfkit.feedback.tasks import TASKS, JudgmentError, likert_consensus, pairwise_from_form, rank_consensus
from rlhfkit.generation.sampling import render_prompt

FORMS = {
    "pairwise": {"choice": "A:3"},
    "rank": {"rank_0": "2", "rank_1": "1", "rank_2": "2"},
    "likert": {"score": "6", "flags": ["hallucination", "expresses_opinion"]},
    "thumbs": {"choice": "down"},
    "edit": {"edited": "A better reply."},
    "demonstration": {"completion": "The reply I would want."},
}
MP4 = b"\x00\x00\x00\x18ftypisom"  # the start of an MP4 file: the box that names its brand
RESPONSES = {
    "pairwise": ["first", "second"],
    "rank": ["one", "two", "three"],
    "likert": ["only"],
    "thumbs": ["only"],
    "edit": ["draft"],
    "demonstration": [],
}


@pytest.fixture
def database(tmp_path):
    """A fresh SQLite file, or with RLHFKIT_TEST_POSTGRES=postgresql+psycopg://user:pw@host a fresh PostgreSQL
    database on that server (created and dropped here), so the same tests check both back ends."""
    server = os.environ.get("RLHFKIT_TEST_POSTGRES")
    if server is None:
        yield f"sqlite:///{tmp_path}/feedback.db"
        return
    name = f"rlhfkit_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    yield f"{server}/{name}"
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def store(database):
    store = Store(database)
    store.add_user("admin", "admin-password", "admin")
    for name in ("ann", "bob", "cat"):
        store.add_user(name, f"{name}-password")
    return store


def rows(*items: dict) -> list[Row]:
    return [Row(f"items.jsonl:{i + 1}", item) for i, item in enumerate(items)]


def sign_in(client: TestClient, name: str) -> str:
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    response = client.post("/login", data={"name": name, "password": f"{name}-password", "csrf": csrf})
    assert response.status_code == 200, response.text
    return re.search(r'name="csrf" value="([^"]+)"', response.text).group(1)


def test_schema_is_alembic_head_and_reopening_keeps_data(database):
    Store(database).add_user("ann", "ann-password")
    store = Store(database)  # migrating again is a no-op
    with store.engine.connect() as connection:
        assert connection.execute(text("select version_num from alembic_version")).scalar() == "0002"
        if database.startswith("sqlite"):
            assert connection.execute(text("pragma journal_mode")).scalar() == "wal"
    assert {"users", "projects", "items", "judgments", "leases", "assignments", "sessions", "api_tokens"} <= set(
        inspect(store.engine).get_table_names()
    )
    assert [u.name for u in store.users()] == ["ann"]
    assert store.authenticate("ann", "ann-password") is not None
    assert store.authenticate("ann", "wrong-password") is None
    assert store.users()[0].password_hash.startswith("$argon2")


def test_malformed_import_names_the_row_and_writes_nothing(store, tmp_path):
    store.create_project("p", "pairwise")
    path = tmp_path / "items.jsonl"
    lines = [
        {"prompt": "a", "responses": ["x", "y"]},
        {"prompt": "b", "responses": ["x", "y"]},
        {"prompt": "c", "responses": ["x"]},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DataError, match=r"items.jsonl:3: field 'responses': a pairwise item needs exactly 2"):
        store.import_items("p", path)
    path.write_text('{"prompt": "a", "responses": ["x", "y"]}\n{"prompt": 3, "responses": ["x", "y"]}\n')
    with pytest.raises(DataError, match=r"items.jsonl:2: field 'prompt'"):
        store.import_items("p", path)
    assert store.items("p") == []


def test_candidates_split_into_one_item_per_reply_for_one_reply_tasks(store):
    store.create_project("rate", "likert", rows=rows({"prompt": "q", "responses": ["a", "b", "c"]}))
    assert [(i.responses, i.source["location"]) for i in store.items("rate")] == [
        (["a"], "items.jsonl:1#1"),
        (["b"], "items.jsonl:1#2"),
        (["c"], "items.jsonl:1#3"),
    ]


def test_each_item_goes_to_per_item_annotators_and_never_twice_to_one(store):
    project = store.create_project("p", "thumbs", per_item=2)
    store.add_items("p", rows({"prompt": "a", "completion": "x"}, {"prompt": "b", "completion": "y"}))
    store.assign("p", ["ann", "bob", "cat"])
    ann, bob, cat = (next(u for u in store.users() if u.name == n) for n in ("ann", "bob", "cat"))
    first = store.next_item(project.id, ann)
    assert store.next_item(project.id, ann).id == first.id  # a reload shows the same item
    assert store.next_item(project.id, bob).id == first.id  # the item closest to done goes first
    assert store.next_item(project.id, cat).id != first.id  # two live leases fill it
    store.submit(first.id, ann, {"choice": "up"})
    assert store.next_item(project.id, ann).id != first.id
    store.submit(first.id, bob, {"choice": "down"})
    assert store.progress(project.id, ann).complete == 1


def test_duplicate_submission_is_stored_once_and_wrong_forms_are_refused(store):
    project = store.create_project("p", "pairwise")
    store.add_items("p", rows({"prompt": "a", "responses": ["x", "y"]}))
    store.assign("p", ["ann"])
    ann = store.authenticate("ann", "ann-password")
    item = store.next_item(project.id, ann)
    with pytest.raises(JudgmentError, match="field 'choice'"):
        store.submit(item.id, ann, {"choice": "C:9"})
    first, created = store.submit(item.id, ann, {"choice": "tie"})
    again, created_again = store.submit(item.id, ann, {"choice": "A:1"})
    assert (created, created_again, again.id) == (True, False, first.id)
    assert [r.payload for r in store.judgments("p")] == [{"outcome": "tie", "preferred": None, "strength": None}]


def test_judgment_for_an_unassigned_item_is_refused(store):
    store.create_project("open", "thumbs")
    store.create_project("secret", "thumbs")
    store.add_items("open", rows({"prompt": "a", "completion": "x"}))
    store.add_items("secret", rows({"prompt": "b", "completion": "y"}))
    store.assign("open", ["ann"])
    secret_item = store.items("secret")[0]
    client = TestClient(create_app(store))
    csrf = sign_in(client, "ann")
    assert client.get(f"/projects/{store.project('secret').id}").status_code == 403
    response = client.post(f"/projects/1/items/{secret_item.id}", data={"choice": "up", "csrf": csrf})
    assert response.status_code == 403
    assert (
        client.post(f"/api/items/{secret_item.id}", json={"choice": "up"}, headers={"X-CSRF-Token": csrf}).status_code
        == 403
    )
    assert "secret" not in client.get("/").text
    assert store.judgments("secret") == []


def test_posts_need_the_sessions_csrf_token(store):
    store.create_project("p", "thumbs")
    store.add_items("p", rows({"prompt": "a", "completion": "x"}))
    store.assign("p", ["ann"])
    client = TestClient(create_app(store))
    sign_in(client, "ann")
    item = store.items("p")[0].id
    assert client.post(f"/projects/1/items/{item}", data={"choice": "up"}).status_code == 403
    assert client.post(f"/projects/1/items/{item}", data={"choice": "up", "csrf": "forged"}).status_code == 403
    assert client.post(f"/api/items/{item}", json={"choice": "up"}).status_code == 403
    assert store.judgments("p") == []


def test_model_output_is_shown_as_text(store):
    store.create_project("p", "pairwise")
    store.add_items(
        "p", rows({"prompt": "<img src=x onerror=alert(1)>", "responses": ["<script>alert(1)</script>", "ok"]})
    )
    store.assign("p", ["ann"])
    client = TestClient(create_app(store))
    sign_in(client, "ann")
    page = client.get("/projects/1")
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<img src=x" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_every_task_through_the_pages_and_into_its_training_format(store, tmp_path):
    ann = store.authenticate("ann", "ann-password")
    for task, responses in RESPONSES.items():
        store.create_project(task, task)
        store.add_items(task, rows({"prompt": f"prompt of {task}", "responses": responses}))
        store.assign(task, ["ann"])
    client = TestClient(create_app(store))
    csrf = sign_in(client, "ann")
    for task, form in FORMS.items():
        project = store.project(task)
        page = client.get(f"/projects/{project.id}").text
        item = int(re.search(r'action="/projects/\d+/items/(\d+)"', page).group(1))
        response = client.post(f"/projects/{project.id}/items/{item}", data={**form, "csrf": csrf})
        assert "nothing left for you" in response.text
        kind, records = export_records(store, task)
        assert kind == TASKS[task].export_format and len(records) == 1
        item = store.items(task)[0]
        expected = expected_record(task, item.responses, store.display_order(item, ann.id), form)
        assert {k: records[0][k] for k in expected} == expected
        assert records[0]["annotator"] == "ann" and records[0]["duration_ms"] >= 0
        for hf in (False, True):
            path = write_records(records, tmp_path / f"{task}{'-hf' if hf else '.jsonl'}", hf)
            assert len(load_records(path, kind)) == 1  # what rlhfkit reward / dpo / sft read


def expected_record(task: str, responses: list, order: list[int], form: dict) -> dict:
    """The exported fields a form must give, worked out from the shuffled order independently of the app."""
    if task == "pairwise":  # "A:3": the reply shown first is much better
        return {"chosen": responses[order[0]], "rejected": responses[order[1]], "strength": 3}
    if task == "rank":  # ranks 2, 1, 2 by slot (already dense), put back in stored order
        ranks = [0] * 3
        for slot, stored in enumerate(order):
            ranks[stored] = int(form[f"rank_{slot}"])
        return {"responses": responses, "ranks": ranks}
    return {
        "likert": {"response": "only", "score": 6, "flags": ["hallucination", "expresses_opinion"]},
        "thumbs": {"completion": "only", "label": False},
        "edit": {"original": "draft", "edited": "A better reply."},
        "demonstration": {"completion": "The reply I would want."},
    }[task]


def test_pairwise_choice_maps_display_slots_to_stored_replies():
    assert pairwise_from_form({"choice": "A:3"}, [1, 0]) == {"outcome": "preferred", "preferred": 1, "strength": 3}
    assert pairwise_from_form({"choice": "B:1"}, [1, 0])["preferred"] == 0
    assert pairwise_from_form({"choice": "both_bad"}, [0, 1])["outcome"] == "both_bad"


def test_agreement_and_krippendorff_alpha_by_hand():
    # 4 units, 2 annotators agreeing on 3. Coincidences: o11 = 4, o22 = 2, o12 = o21 = 1; n1 = 5, n2 = 3, n = 8.
    # Nominal alpha = 1 - (n - 1) · (o12 + o21) / (n1·n2 + n2·n1) = 1 - 7·2/30 = 0.5333.
    values = {u: {"a": a, "b": b} for u, (a, b) in enumerate([(1, 1), (1, 1), (2, 2), (2, 1)])}
    overall, own = pairwise_agreement(values)
    assert overall == pytest.approx(0.75) and own == {"a": 0.75, "b": 0.75}
    assert krippendorff_alpha(values, "nominal") == pytest.approx(1 - 14 / 30)
    assert krippendorff_alpha({0: {"a": 1, "b": 1}}, "nominal") is None  # no variation: undefined


def test_project_stats_gold_accuracy_and_consensus(store):
    store.create_project("p", "pairwise", per_item=3)
    store.add_items(
        "p",
        rows(
            {"prompt": "q", "responses": ["good", "bad"], "gold": {"choice": "A:2"}},
            {"prompt": "r", "responses": ["x", "y"]},
        ),
    )
    store.assign("p", ["ann", "bob", "cat"])
    item, other = store.items("p")
    users = {u.name: u for u in store.users()}
    picks = {"ann": 0, "bob": 0, "cat": 1}  # stored index each annotator prefers on the gold item
    for name, pick in picks.items():
        assert store.next_item(item.project_id, users[name]).id == item.id  # judged only once handed out
        slot = "AB"[store.display_order(item, users[name].id).index(pick)]
        store.submit(item.id, users[name], {"choice": f"{slot}:2"})
    assert store.next_item(item.project_id, users["ann"]).id == other.id
    store.submit(other.id, users["ann"], {"choice": "tie"})
    stats = project_stats(TASKS["pairwise"], 3, 2, store.judgments("p"))
    assert (stats.items, stats.complete_items, stats.judgments) == (2, 1, 4)
    assert stats.agreement == pytest.approx(1 / 3)  # of 3 annotator pairs on the gold item, one agrees
    by_name = {a.name: a for a in stats.annotators}
    assert (by_name["ann"].gold_accuracy, by_name["cat"].gold_accuracy) == (1.0, 0.0)
    _, records = export_records(store, "p", consensus=True)
    assert [(r["chosen"], r["annotators"]) for r in records if "tie" not in r] == [("good", 3)]


def test_consensus_of_rankings_and_ratings():
    # Bradley-Terry on the pairs the three rankings imply: reply 0 beats 1 twice of three and beats 2 always.
    assert rank_consensus([{"ranks": [1, 2, 3]}, {"ranks": [2, 1, 3]}, {"ranks": [1, 3, 2]}]) == {"ranks": [1, 2, 3]}
    ratings = [
        {"score": 2, "flags": ["hallucination"]},
        {"score": 5, "flags": []},
        {"score": 6, "flags": ["hallucination"]},
    ]
    assert likert_consensus(ratings) == {"score": 5, "flags": ["hallucination"]}


def test_api_login_next_submit(store):
    store.create_project("p", "rank")
    store.add_items("p", rows({"prompt": "q", "responses": ["a", "b", "c"]}))
    store.assign("p", ["bob"])
    client = TestClient(create_app(store))
    assert client.post("/api/login", json={"name": "bob", "password": "nope"}).status_code == 401
    csrf = client.post("/api/login", json={"name": "bob", "password": "bob-password"}).json()["csrf"]
    item = client.get("/api/projects/1/next").json()["item"]
    assert sorted(item["responses"]) == ["a", "b", "c"]
    form = {f"rank_{slot}": str(slot + 1) for slot in range(3)}
    first = client.post(f"/api/items/{item['id']}", json=form, headers={"X-CSRF-Token": csrf})
    second = client.post(f"/api/items/{item['id']}", json=form, headers={"X-CSRF-Token": csrf})
    assert (first.status_code, second.status_code) == (201, 200)
    assert client.get("/api/projects/1/next").json() == {"item": None}
    ranks = store.judgments("p")[0].payload["ranks"]  # stored order: "a", "b", "c"
    assert [ranks["abc".index(text)] for text in item["responses"]] == [1, 2, 3]  # slot i was given rank i + 1


def test_admin_pages_create_import_assign_export(store, tmp_path):
    client = TestClient(create_app(store))
    csrf = sign_in(client, "admin")
    client.post("/admin/projects", data={"name": "web", "task": "thumbs", "per_item": "1", "csrf": csrf})
    bad = client.post(
        "/admin/projects/1/items",
        data={"csrf": csrf},
        files={"file": ("items.jsonl", b'{"prompt": "a", "completion": "x"}\n{"completion": "y"}\n')},
    )
    assert bad.status_code == 400 and "items.jsonl:2: field &#39;prompt&#39;" in bad.text
    client.post(
        "/admin/projects/1/items",
        data={"csrf": csrf},
        files={"file": ("items.jsonl", b'{"prompt": "a", "completion": "x"}\n')},
    )
    client.post("/admin/projects/1/assign", data={"users": ["ann"], "csrf": csrf})
    ann = store.authenticate("ann", "ann-password")
    store.submit(store.next_item(1, ann).id, ann, {"choice": "up"})
    download = client.get("/projects/1/export")
    assert [json.loads(line)["label"] for line in download.text.splitlines()] == [True]
    assert "100.0%" not in client.get("/projects/1/stats").text  # one annotator: no agreement to report
    annotator = TestClient(create_app(store))
    sign_in(annotator, "ann")
    assert annotator.get("/admin").status_code == 403
    assert annotator.get("/projects/1/export").status_code == 403


def test_cli_project_from_generated_replies_and_export(tmp_path, monkeypatch, database):
    db = database
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "It is a truth"}\n{"prompt": "Emma was"}\n')
    runner = CliRunner()
    monkeypatch.setenv("RLHFKIT_PASSWORD", "ann-password")
    assert runner.invoke(cli_app, ["feedback", "user", "ann", "--db", db]).exit_code == 0
    result = runner.invoke(
        cli_app,
        [
            "feedback",
            "project",
            "gen",
            "--task",
            "pairwise",
            "--prompts",
            str(prompts),
            "--models",
            "tiny-austen",
            "--samples",
            "2",
            "--assign",
            "ann",
            "--db",
            db,
        ],
    )
    assert result.exit_code == 0, result.output
    store = Store(db)
    items = store.items("gen")
    assert len(items) == 2 and all(len(i.responses) == 2 and i.source["models"] == ["tiny-austen"] * 2 for i in items)
    ann = store.authenticate("ann", "ann-password")
    for _ in items:
        store.submit(store.next_item(store.project("gen").id, ann).id, ann, {"choice": "B:2"})
    out = tmp_path / "prefs.jsonl"
    result = runner.invoke(cli_app, ["export", "gen", "--output", str(out), "--db", db])
    assert result.exit_code == 0 and "2 preference records" in result.output
    assert len(load_records(out, "preference")) == 2
    bad = runner.invoke(
        cli_app, ["feedback", "project", "bad", "--task", "likert", "--items", str(prompts), "--db", db]
    )
    assert bad.exit_code == 2
    with pytest.raises(StoreError):
        store.project("bad")  # the failed import left no empty project behind


def test_chat_turns_become_pairwise_items(store):
    store.create_project("talk", "chat", chat_model="tiny-austen")
    store.assign("talk", ["ann"])
    client = TestClient(create_app(store))
    csrf = sign_in(client, "ann")
    page = client.post("/projects/1/chat", data={"message": "Good morning.", "csrf": csrf}).text
    item = store.items("talk")[0]
    assert item.prompt == [{"role": "user", "content": "Good morning."}] and len(item.responses) == 2
    assert f'action="/projects/1/items/{item.id}"' in page
    client.post(f"/projects/1/items/{item.id}", data={"choice": "B:1", "csrf": csrf})
    ann = store.authenticate("ann", "ann-password")
    picked = item.responses[store.display_order(item, ann.id)[1]]
    client.post("/projects/1/chat", data={"message": "And then?", "csrf": csrf})
    second = store.items("talk")[1]
    assert second.prompt == [
        *item.prompt,
        {"role": "assistant", "content": picked},
        {"role": "user", "content": "And then?"},
    ]
    _, records = export_records(store, "talk")
    assert records[0]["chosen"] == picked and records[0]["prompt"] == item.prompt


def test_clips_are_served_to_assigned_annotators_only(store, tmp_path):
    clips = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for clip, content in zip(clips, (MP4 + b"clip a", MP4 + b"clip b"), strict=True):
        clip.write_bytes(content)
    item = {"prompt": "Which hop is better?", "responses": ["left", "right"], "media": [str(c) for c in clips]}
    store.create_project("clips", "pairwise", rows=rows(item))
    store.assign("clips", ["ann"])
    annotator, outsider = TestClient(create_app(store)), TestClient(create_app(store))
    sign_in(annotator, "ann")
    sign_in(outsider, "bob")
    item_id = store.items("clips")[0].id
    page = annotator.get("/projects/1").text
    assert f'<video src="/media/{item_id}/0"' in page and f'<video src="/media/{item_id}/1"' in page
    assert annotator.get(f"/media/{item_id}/1").content == MP4 + b"clip b"
    assert annotator.get(f"/media/{item_id}/2").status_code == 404
    assert outsider.get(f"/media/{item_id}/0").status_code == 403


# --- issue 15: media, judging rules, accounts, bad requests --------------------------------------------------


def api_client(store, name: str) -> tuple[TestClient, dict]:
    """A client signed in through the JSON API, and the CSRF header its posts need."""
    client = TestClient(create_app(store))
    response = client.post("/api/login", json={"name": name, "password": f"{name}-password"})
    assert response.status_code == 200, response.text
    return client, {"X-CSRF-Token": response.json()["csrf"]}


def test_media_are_copied_into_the_store_folder_and_served_only_from_there_as_video(store, tmp_path):
    clip = tmp_path / "hop.mp4"
    clip.write_bytes(MP4 + b"frames")
    html = tmp_path / "page.mp4"
    html.write_bytes(b"<script>alert(document.cookie)</script>")
    database = store.url.split(":///", 1)[1] if store.url.startswith("sqlite") else "/etc/hostname"
    for path, problem in [
        ("/etc/hostname", "is not one of .mp4"),
        (database, "is not one of .mp4"),  # the store's own file
        (str(html), "does not hold video/mp4 data"),
        (str(tmp_path / "gone.mp4"), "no such file"),
        (str(tmp_path), "is not one of .mp4"),
    ]:
        row = {"prompt": "q", "responses": ["a", "b"], "media": [str(clip), path]}
        with pytest.raises(DataError, match=rf"items.jsonl:1: field 'media\[1\]': .*{re.escape(problem)}"):
            store.create_project(f"p{len(store.projects())}", "pairwise", rows=rows(row))
    assert store.projects() == []
    store.create_project(
        "clips", "pairwise", rows=rows({"prompt": "q", "responses": ["a", "b"], "media": [str(clip)] * 2})
    )
    store.assign("clips", ["ann"])
    item = store.items("clips")[0]
    copy = Path(item.media[0])
    assert copy.parent == store.media.root / str(store.project("clips").id) and copy.read_bytes() == MP4 + b"frames"
    clip.unlink()  # the original may go: the store serves its copy
    client = TestClient(create_app(store))
    sign_in(client, "ann")
    response = client.get(f"/media/{item.id}/0")
    assert response.status_code == 200 and response.content == MP4 + b"frames"
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"].startswith("inline; filename=")
    # A path put in the database by other means is still served only from inside the media folder, and a
    # missing file or a folder there is a 404, not a 500.
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(MP4)
    (store.media.root / "folder.mp4").mkdir()
    for stored in [str(outside), "/etc/hostname", str(store.media.root / "folder.mp4"), str(copy) + ".gone"]:
        with store.session() as session:
            session.get(Item, item.id).media = [stored, stored]
        assert client.get(f"/media/{item.id}/0").status_code == 404, stored


def test_a_judgment_needs_the_annotators_own_lease(store):
    store.create_project("p", "thumbs", per_item=1)
    store.add_items("p", rows({"prompt": "a", "completion": "x"}, {"prompt": "b", "completion": "y"}))
    store.assign("p", ["ann", "bob"])
    ann, ann_csrf = api_client(store, "ann")
    bob, bob_csrf = api_client(store, "bob")
    bobs = bob.get("/api/projects/1/next").json()["item"]["id"]
    other = next(i.id for i in store.items("p") if i.id != bobs)
    # Ann judging Bob's leased item, or an item never handed to her, is refused; Bob's judgment counts.
    assert ann.post(f"/api/items/{bobs}", json={"choice": "up"}, headers=ann_csrf).status_code == 409
    assert ann.post(f"/api/items/{other}", json={"choice": "up"}, headers=ann_csrf).status_code == 409
    assert bob.post(f"/api/items/{bobs}", json={"choice": "down"}, headers=bob_csrf).status_code == 201
    assert [(r.annotator, r.item.id) for r in store.judgments("p")] == [("bob", bobs)]
    assert len(export_records(store, "p")[1]) == 1


def test_a_chat_turn_is_judged_only_by_the_labeler_who_wrote_it(store):
    project = store.create_project("talk", "chat", chat_model="tiny-austen")
    store.assign("talk", ["ann", "bob"])
    ann = store.authenticate("ann", "ann-password")
    with store.session() as session:  # a turn of Ann's conversation, as chat.say stores it
        turn = Item(
            project_id=project.id,
            prompt=[{"role": "user", "content": "Hello"}],
            responses=["Good day.", "Hi."],
            source={"conversation": "c1", "user": ann.id, "turn": 1},
        )
        session.add(turn)
    bob, bob_csrf = api_client(store, "bob")
    assert bob.post(f"/api/items/{turn.id}", json={"choice": "A:3"}, headers=bob_csrf).status_code == 409
    assert bob.get(f"/api/projects/{project.id}/next").status_code == 409  # chat items are not handed out
    client, csrf = api_client(store, "ann")
    assert client.post(f"/api/items/{turn.id}", json={"choice": "A:3"}, headers=csrf).status_code == 201
    assert [r.annotator for r in store.judgments("talk")] == ["ann"]


def test_per_item_holds_when_annotators_race_and_try_to_take_each_others_items(database):
    store = Store(database)
    names = [f"a{k}" for k in range(6)]
    for name in names:
        store.add_user(name, f"{name}-password")
    items = [{"prompt": f"q{k}", "completion": "x"} for k in range(5)]
    project = store.create_project("race", "thumbs", per_item=2, rows=rows(*items))
    store.assign("race", names)
    item_ids = [i.id for i in store.items("race")]
    users = [store.authenticate(name, f"{name}-password") for name in names]
    refused: list[int] = []
    barrier = threading.Barrier(len(users))

    def annotate(user) -> None:
        barrier.wait()
        for item_id in item_ids:  # a thief: every item, leased or not
            try:
                store.submit(item_id, user, {"choice": "up"})
            except Conflict:
                refused.append(item_id)
        while (item := store.next_item(project.id, user)) is not None:
            store.submit(item.id, user, {"choice": "up"})
            store.submit(item.id, user, {"choice": "down"})  # the double submit: stored once

    threads = [threading.Thread(target=annotate, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    per_item = Counter(row.item.id for row in store.judgments("race"))
    assert per_item == dict.fromkeys(item_ids, 2) and len(refused) >= len(users) * len(item_ids) - 10
    with pytest.raises(IntegrityError), store.session() as session:  # the database holds the cap by itself
        first = store.judgments("race")[0].judgment
        session.add(
            Judgment(
                item_id=first.item_id,
                user_id=users[-1].id,
                slot=first.slot,
                payload={},
                display_order=[],
                duration_ms=0,
            )
        )
        session.flush()


def test_migration_0002_numbers_existing_judgments_into_slots(database):
    engine = open_engine(database)
    config = AlembicConfig()
    config.set_main_option("script_location", str(files("rlhfkit.feedback") / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        alembic_command.upgrade(config, "0001")
        connection.execute(text("insert into users values (1, 'ann', 'x', 'annotator', '2025-01-01')"))
        connection.execute(text("insert into users values (2, 'bob', 'x', 'annotator', '2025-01-01')"))
        connection.execute(text("insert into projects values (1, 'p', 'thumbs', '', 1, null, '2025-01-01')"))
        connection.execute(text("""insert into items values (1, 1, '"q"', '["x"]', null, null, '{}', '2025-01-01')"""))
        for judgment, user in ((1, 1), (2, 2)):  # two judgments of a per_item=1 item, as the old code allowed
            values = f"""({judgment}, 1, {user}, '{{"up": true}}', '[0]', 5, '2025-01-01')"""
            connection.execute(text(f"insert into judgments values {values}"))
    engine.dispose()
    store = Store(database)
    assert [(r.annotator, r.judgment.slot) for r in store.judgments("p")] == [("ann", 0), ("bob", 1)]
    assert all(user.active for user in store.users())


def test_login_needs_json_from_this_site(store):
    client = TestClient(create_app(store))
    body = json.dumps({"name": "ann", "password": "ann-password"})
    plain = client.post("/api/login", content=body, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "session" not in client.cookies
    cross = client.post(
        "/api/login", content=body, headers={"Content-Type": "application/json", "Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    same = client.post(
        "/api/login", content=body, headers={"Content-Type": "application/json", "Origin": "http://testserver"}
    )
    assert same.status_code == 200


def test_failed_sign_ins_are_throttled_per_name_and_per_address(store):
    client = TestClient(create_app(store))
    codes = [client.post("/api/login", json={"name": "ann", "password": "guess"}).status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]
    locked = client.post("/api/login", json={"name": "ann", "password": "ann-password"})
    assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 900
    assert client.post("/api/login", json={"name": "bob", "password": "bob-password"}).status_code == 200
    codes = [client.post("/api/login", json={"name": f"u{k}", "password": "guess"}).status_code for k in range(16)]
    assert codes[-1] == 429 and codes[:14] == [401] * 14  # 20 failures from one address: 5 above, 15 here
    form_csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    page = client.post("/login", data={"name": "cat", "password": "cat-password", "csrf": form_csrf})
    assert page.status_code == 429 and "try again in" in page.text


def test_unknown_names_cost_a_password_check_too(store, monkeypatch):
    from rlhfkit.feedback.store import accounts

    checked = []
    hasher = accounts._hasher

    class Spy:
        def verify(self, hashed: str, password: str) -> bool:
            checked.append(hashed)
            return hasher.verify(hashed, password)

        def hash(self, password: str) -> str:
            return hasher.hash(password)

    monkeypatch.setattr(accounts, "_hasher", Spy())
    assert store.authenticate("nobody", "guess") is None
    assert store.authenticate("ann", "guess") is None
    assert len(checked) == 2 and checked[0].startswith("$argon2")


def test_sign_out_password_change_and_deactivation_revoke_sessions(store):
    store.create_project(
        "p", "thumbs", rows=rows({"prompt": "a", "completion": "x"}, {"prompt": "b", "completion": "y"})
    )
    store.assign("p", ["ann"])
    client, csrf = api_client(store, "ann")
    replay = TestClient(create_app(store), cookies=dict(client.cookies))
    item = replay.get("/api/projects/1/next").json()["item"]["id"]
    client.post("/logout", data={"csrf": csrf["X-CSRF-Token"]})
    assert replay.get("/api/projects/1/next").status_code == 401
    assert replay.post(f"/api/items/{item}", json={"choice": "up"}, headers=csrf).status_code in (401, 403)
    assert store.judgments("p") == []
    # A password change signs out every session, this one too.
    first, _ = api_client(store, "ann")
    second, _ = api_client(store, "ann")
    form_csrf = sign_in(second, "ann")
    response = second.post(
        "/account/password", data={"current": "ann-password", "new": "a new passphrase", "csrf": form_csrf}
    )
    assert response.status_code == 200 and "Sign in" in response.text
    assert first.get("/api/projects/1/next").status_code == 401
    assert store.authenticate("ann", "a new passphrase") is not None
    # Deactivation by an admin: sessions and tokens refused, no new sign-in.
    third = TestClient(create_app(store))
    assert third.post("/api/login", json={"name": "bob", "password": "bob-password"}).status_code == 200
    admin = TestClient(create_app(store))
    admin_csrf = sign_in(admin, "admin")
    bob = next(u for u in store.users() if u.name == "bob")
    token = store.create_token(bob, "script")
    admin.post(f"/admin/users/{bob.id}/active", data={"active": "0", "csrf": admin_csrf})
    assert third.get("/").status_code == 200 and "Sign in" in third.get("/").text
    assert (
        TestClient(create_app(store))
        .get("/api/projects/1/next", headers={"Authorization": f"Bearer {token}"})
        .status_code
        == 401
    )
    assert store.authenticate("bob", "bob-password") is None
    assert [(e.actor, e.action, e.target) for e in store.audit_log(1)] == [("admin", "deactivate user", "bob")]


def test_https_only_marks_the_cookie_secure(store):
    client = TestClient(create_app(store, AppSettings(https_only=True)), base_url="https://testserver")
    response = client.post("/api/login", json={"name": "ann", "password": "ann-password"})
    assert "secure" in response.headers["set-cookie"].lower()
    assert "secure" not in TestClient(create_app(store)).get("/login").headers["set-cookie"].lower()


@pytest.mark.parametrize(
    ("name", "password", "problem"),
    [
        ("newbie", "        ", "not only spaces"),
        ("newbie", "password", "most common passwords"),
        ("newbie", "Password1", "most common passwords"),
        ("newbie", "short", "at least 8"),
        ("", "a fine passphrase", "not a user name"),
        ("<script>", "a fine passphrase", "not a user name"),
    ],
)
def test_weak_passwords_and_odd_names_are_refused(store, name, password, problem):
    with pytest.raises(StoreError, match=problem):
        store.add_user(name, password)


def test_api_tokens_are_hashed_revocable_and_need_no_csrf(store):
    store.create_project("p", "thumbs", rows=rows({"prompt": "a", "completion": "x"}))
    store.assign("p", ["ann"])
    ann = store.authenticate("ann", "ann-password")
    token = store.create_token(ann, "nightly script")
    assert token not in {t.token_hash for t in store.tokens(ann)}
    client = TestClient(create_app(store))
    bearer = {"Authorization": f"Bearer {token}"}
    item = client.get("/api/projects/1/next", headers=bearer).json()["item"]["id"]
    assert client.post(f"/api/items/{item}", json={"choice": "up"}, headers=bearer).status_code == 201
    store.revoke_token(ann, store.tokens(ann)[0].id)
    assert client.get("/api/projects/1/next", headers=bearer).status_code == 401
    assert client.get("/api/projects/1/next", headers={"Authorization": "Bearer forged"}).status_code == 401


def test_admin_actions_are_in_the_audit_log_on_the_admin_page(store):
    client = TestClient(create_app(store))
    csrf = sign_in(client, "admin")
    client.post("/admin/users", data={"name": "dan", "password": "dan-password", "csrf": csrf})
    client.post("/admin/projects", data={"name": "web", "task": "thumbs", "csrf": csrf})
    client.post("/admin/projects/1/assign", data={"users": ["dan"], "csrf": csrf})
    client.get("/projects/1/export")
    actions = [(e.actor, e.action) for e in reversed(store.audit_log())]
    assert actions[-4:] == [
        ("admin", "create user"),
        ("admin", "create project"),
        ("admin", "assign"),
        ("admin", "export"),
    ]
    page = client.get("/admin").text
    assert "<td>admin</td><td>create project</td><td>web (thumbs, 0 items)</td>" in page
    assert "<td>admin</td><td>assign</td><td>web: dan</td>" in page


BAD_BODIES = [
    b"{not json",
    b"",
    b'{"choice": "\xff\xfe"}',
    b"[1, 2]",
    b'"up"',
    b"null",
]


def test_bad_json_bodies_get_4xx_and_store_nothing(store):
    store.create_project("p", "likert", rows=rows({"prompt": "a", "completion": "x"}))
    store.create_project("r", "rank", rows=rows({"prompt": "a", "responses": ["x", "y", "z"]}))
    store.create_project("e", "edit", rows=rows({"prompt": "a", "completion": "x"}))
    for project in ("p", "r", "e"):
        store.assign(project, ["ann"])
    client, csrf = api_client(store, "ann")
    likert = client.get("/api/projects/1/next").json()["item"]["id"]
    rank = client.get("/api/projects/2/next").json()["item"]["id"]
    edit = client.get("/api/projects/3/next").json()["item"]["id"]
    json_type = {**csrf, "Content-Type": "application/json"}
    for body in BAD_BODIES:
        for url in (f"/api/items/{likert}", "/api/login"):
            response = client.post(url, content=body, headers=json_type)
            assert response.status_code in (400, 422), (url, body, response.status_code)
    for item, form, field in [
        (likert, {"score": "--3"}, "score"),
        (likert, {"score": "²"}, "score"),
        (likert, {"score": "٣"}, "score"),
        (likert, {"score": 3, "flags": 123}, "flags"),
        (likert, {"score": 3, "flags": {"hallucination": True}}, "flags"),
        (likert, {"score": 3, "surprise": 1}, "surprise"),
        (rank, {"rank_0": "--1", "rank_1": "2", "rank_2": "3"}, "rank_0"),
        (edit, {"edited": {"a": 1}}, "edited"),
    ]:
        response = client.post(f"/api/items/{item}", json=form, headers=csrf)
        assert response.status_code == 422 and field in response.text, (form, response.text)
    assert client.post("/api/items/99999999999999999999", json={"score": 3}, headers=csrf).status_code == 422
    assert all(store.judgments(p) == [] for p in ("p", "r", "e"))


def test_requests_that_used_to_fail_with_500_get_4xx_and_store_nothing(store, tmp_path):
    store.create_project("p", "thumbs", rows=rows({"prompt": "a", "completion": "x"}))
    store.assign("p", ["ann"])
    ann = TestClient(create_app(store), raise_server_exceptions=False)
    csrf = sign_in(ann, "ann")
    item = store.next_item(1, store.authenticate("ann", "ann-password")).id
    assert ann.post(f"/projects/999/items/{item}", data={"choice": "up", "csrf": csrf}).status_code == 403
    assert ann.post("/projects/1/chat", data={"message": "hello", "csrf": csrf}).status_code == 404
    assert store.judgments("p") == [] and len(store.items("p")) == 1
    admin = TestClient(create_app(store), raise_server_exceptions=False)
    csrf = sign_in(admin, "admin")
    for url, form, field in [
        ("/admin/users", {"password": "a fine passphrase"}, "name"),
        ("/admin/projects", {"task": "thumbs"}, "name"),
        ("/admin/projects", {"name": "q", "task": "thumbs", "per_item": "abc"}, "per_item"),
    ]:
        response = admin.post(url, data={**form, "csrf": csrf})
        assert response.status_code == 400 and f"field &#39;{field}&#39;" in response.text, (url, form)
    upload = admin.post(
        "/admin/projects/1/items",
        data={"csrf": csrf},
        files={"file": ("latin.jsonl", '{"prompt": "café"}'.encode("latin-1"))},
    )
    assert upload.status_code == 400 and "latin.jsonl:1: not UTF-8" in upload.text
    assert admin.get("/projects/999/stats").status_code == 404 and admin.get("/projects/999/export").status_code == 404
    big = admin.post("/api/items/1", content=b"x" * (20 << 20), headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    assert [p.name for p in store.projects()] == ["p"] and len(store.items("p")) == 1


def test_export_of_a_project_with_a_non_latin1_name(store):
    store.create_project("日本語 ✓", "thumbs", rows=rows({"prompt": "a", "completion": "x"}))
    client = TestClient(create_app(store))
    sign_in(client, "admin")
    response = client.get("/projects/1/export")
    assert response.status_code == 200
    assert (
        "filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E%20%E2%9C%93-unpaired.jsonl"
        in response.headers["content-disposition"]
    )


def test_chat_format_replies_are_imported(store, tmp_path):
    chat_reply = [{"role": "assistant", "content": "Indeed."}]
    row = {
        "prompt": [{"role": "user", "content": "Well?"}],
        "responses": [chat_reply, [{"role": "assistant", "content": "No."}]],
    }
    store.create_project("p", "pairwise", rows=rows(row))
    assert store.items("p")[0].responses[0] == chat_reply
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hm?"}], "completion": chat_reply}) + "\n")
    store.create_project("t", "thumbs")
    assert store.import_items("t", path) == 1 and store.items("t")[0].responses == [chat_reply]


def test_openapi_schema_is_served_only_when_asked(store):
    assert TestClient(create_app(store)).get("/openapi.json").status_code == 404
    schema = TestClient(create_app(store, AppSettings(api_docs=True))).get("/openapi.json").json()
    assert "/api/items/{item_id}" in schema["paths"]


def test_a_chat_message_longer_than_the_window_is_cut_to_fit(store):
    from rlhfkit.models.loading import load_tokenizer

    tokenizer = load_tokenizer("tiny-austen")
    long = [{"role": "user", "content": "It is a truth universally acknowledged. " * 60}]
    shown = chat.fit_to_window(tokenizer, long, 192)
    assert long[0]["content"].endswith(shown[0]["content"]) and 150 < len(shown[0]["content"]) < len(long[0]["content"])
    assert len(tokenizer(render_prompt(tokenizer, shown))["input_ids"]) <= 192
    conversation = [
        {"role": "user", "content": "x " * 80},
        {"role": "assistant", "content": "y " * 80},
        {"role": "user", "content": "Hi"},
    ]
    assert chat.fit_to_window(tokenizer, conversation, 192) == conversation[2:]
    store.create_project("talk", "chat", chat_model="tiny-austen")
    store.assign("talk", ["ann"])
    client = TestClient(create_app(store))
    csrf = sign_in(client, "ann")
    response = client.post("/projects/1/chat", data={"message": "Emma. " * 500, "csrf": csrf})
    assert response.status_code == 200 and len(store.items("talk")[0].responses) == 2
