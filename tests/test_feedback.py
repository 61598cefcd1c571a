"""The feedback store and app: migrations, imports, leases, judgments, agreement, consensus, export, security."""

from __future__ import annotations

import json
import os
import re
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from rlhfkit.cli import app as cli_app
from rlhfkit.data.readers import DataError, Row
from rlhfkit.data.records import load_records
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.export import export_records, write_records
from rlhfkit.feedback.stats import krippendorff_alpha, pairwise_agreement, project_stats
from rlhfkit.feedback.store import Store, StoreError
from rlhfkit.feedback.tasks import TASKS, JudgmentError, likert_consensus, pairwise_from_form, rank_consensus

FORMS = {
    "pairwise": {"choice": "A:3"},
    "rank": {"rank_0": "2", "rank_1": "1", "rank_2": "2"},
    "likert": {"score": "6", "flags": ["hallucination", "expresses_opinion"]},
    "thumbs": {"choice": "down"},
    "edit": {"edited": "A better reply."},
    "demonstration": {"completion": "The reply I would want."},
}
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
        assert connection.execute(text("select version_num from alembic_version")).scalar() == "0001"
        if database.startswith("sqlite"):
            assert connection.execute(text("pragma journal_mode")).scalar() == "wal"
    assert {"users", "projects", "items", "judgments", "leases", "assignments"} <= set(
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
        slot = "AB"[store.display_order(item, users[name].id).index(pick)]
        store.submit(item.id, users[name], {"choice": f"{slot}:2"})
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
    for clip, content in zip(clips, (b"clip a", b"clip b"), strict=True):
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
    assert annotator.get(f"/media/{item_id}/1").content == b"clip b"
    assert annotator.get(f"/media/{item_id}/2").status_code == 404
    assert outsider.get(f"/media/{item_id}/0").status_code == 403
