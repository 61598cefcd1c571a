"""End-to-end tests of the feedback web app in a real headless Chromium (Playwright).

The app runs under uvicorn in a background thread on a fresh SQLite store. Every task type is labelled with the
mouse and with the keyboard shortcuts the pages show in <kbd>, and each judgment is then read back from the
database (a second `Store` on the same file) and from the export, both `export_records` and the admin's
download link. With RLHFKIT_SCREENSHOTS=docs/screenshots the pages' screenshots for the README are written
there (`RLHFKIT_SCREENSHOTS=docs/screenshots python -m pytest tests/test_feedback_browser.py`); otherwise to a
temporary folder, so a test run leaves the checkout as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rlhfkit.data.readers import Row
from rlhfkit.data.records import INSTRUCTGPT_FLAGS
from rlhfkit.feedback import chat
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.export import export_records
from rlhfkit.feedback.schema import Item
from rlhfkit.feedback.store import Store

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need `pip install playwright`")
uvicorn = pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow  # a browser, a server thread and (for the chat) a real model

Page = Any  # playwright.sync_api.Page, imported lazily above

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VIEWPORT = {"width": 1200, "height": 800}
SCREENSHOTS = Path(os.environ.get("RLHFKIT_SCREENSHOTS") or tempfile.mkdtemp(prefix="rlhfkit-screenshots-"))
PASSWORD = "correct horse battery"
XSS = "<script>window.pwned=1</script><b>x</b>"
CHAT_TIMEOUT_MS = 120_000  # a chat turn samples two replies from tiny-austen on a busy CPU

PAIRWISE_ITEMS = [
    {"prompt": f"Which opening line is better? ({n})", "responses": [f"It is a truth {n}.", f"Call me Emma {n}."]}
    for n in range(6)
]
RANK_ITEMS = [
    {"prompt": f"Rank these greetings ({n}).", "responses": [f"Good day {n}.", f"How do you do {n}?", f"Hello {n}!"]}
    for n in range(2)
]
LIKERT_ITEMS = [{"prompt": f"Describe Bath ({n}).", "completion": f"Bath is a fine town {n}."} for n in range(2)]
THUMBS_ITEMS = [{"prompt": f"Say something kind ({n}).", "completion": f"You dance well {n}."} for n in range(2)]
EDIT_ITEMS = [{"prompt": f"Fix the grammar ({n}).", "completion": f"she were very happy {n}"} for n in range(2)]
DEMO_ITEMS = [{"prompt": f"Write an invitation to a ball ({n})."} for n in range(2)]


@dataclass
class Env:
    base_url: str
    db: Store  # a second Store on the server's database, for reading back what the browser did
    browser: Any
    projects: dict[str, int]  # project name -> id
    users: dict[str, int]  # user name -> id

    def new_page(self) -> Page:
        context = self.browser.new_context(base_url=self.base_url, viewport=VIEWPORT, accept_downloads=True)
        context.set_default_timeout(20_000)
        return context.new_page()


def _seed(store: Store) -> tuple[dict[str, int], dict[str, int]]:
    users = {
        name: store.add_user(name, PASSWORD, role).id
        for name, role in [("boss", "admin"), ("ann", "annotator"), ("other", "annotator")]
    }
    projects: dict[str, int] = {}
    for name, task, rows in [
        ("pairwise", "pairwise", PAIRWISE_ITEMS),
        ("rank", "rank", RANK_ITEMS),
        ("likert", "likert", LIKERT_ITEMS),
        ("thumbs", "thumbs", THUMBS_ITEMS),
        ("edit", "edit", EDIT_ITEMS),
        ("demonstration", "demonstration", DEMO_ITEMS),
        ("xss", "pairwise", [{"prompt": XSS, "responses": [XSS, "A plain reply."]}]),
        ("secret", "thumbs", [{"prompt": "Not for ann.", "completion": "Hidden."}]),
    ]:
        projects[name] = store.create_project(name, task, instructions=f"Judge the {task} items.").id
        store.add_items(name, [Row(f"{name}:{n}", row) for n, row in enumerate(rows, start=1)])
    projects["chat"] = store.create_project("chat", "chat", chat_model="tiny-austen").id
    for name in projects:
        store.assign(name, ["other"] if name == "secret" else ["ann"])
    return projects, users


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    url = f"sqlite:///{tmp_path_factory.mktemp('feedback') / 'feedback.db'}"
    store = Store(url)
    projects, users = _seed(store)
    patch = pytest.MonkeyPatch()
    patch.setattr(chat, "SETTINGS", chat.SETTINGS.model_copy(update={"max_new_tokens": 24}))  # shorter chat turns
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    playwright = sync_api.sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    try:
        yield Env(f"http://127.0.0.1:{port}", Store(url), browser, projects, users)
    finally:
        browser.close()
        playwright.stop()
        server.should_exit = True
        thread.join(timeout=10)
        patch.undo()


def login(env: Env, name: str, start: str = "/") -> Page:
    page = env.new_page()
    page.goto(start)
    page.fill("#login input[name=name]", name)
    page.fill("#login input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("#login button[type=submit]")
    assert page.locator("header .who").text_content() == name
    return page


@pytest.fixture
def ann(env: Env) -> Iterator[Page]:
    page = login(env, "ann")
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def boss(env: Env) -> Iterator[Page]:
    page = login(env, "boss")
    yield page
    page.context.close()


# --- helpers ------------------------------------------------------------------------------------------------


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000, f"{path}: an empty-looking screenshot"


def submits(page: Page, action: Callable[[], Any], timeout: float = 20_000, status: int = 200) -> None:
    """Run `action` (a click or key press) and wait for the page the form's POST leads to (after redirects)."""
    with page.expect_navigation(timeout=timeout) as navigation:
        action()
    response = navigation.value
    assert response is not None and response.status == status, (page.url, response and response.status)


def current_item(env: Env, page: Page) -> Item:
    """The item on the page, from the judgment form's action /projects/{p}/items/{i}."""
    action = page.get_attribute("form#judgment", "action")
    item_id = int(action.rsplit("/", 1)[1])
    with env.db.session() as session:
        return session.get(Item, item_id)


def shown_order(env: Env, page: Page, item: Item) -> list[int]:
    """Display slot -> stored reply index, read from the page (each `.reply` section's data-slot and text),
    and checked against `Store.display_order`."""
    sections = page.locator(".reply")
    texts = {
        int(sections.nth(i).get_attribute("data-slot")): sections.nth(i).locator(".text").first.text_content()
        for i in range(sections.count())
    }
    order = [item.responses.index(texts[slot]) for slot in range(len(item.responses))]
    assert order == Store.display_order(item, env.users["ann"])
    return order


def judgment_of(env: Env, project: str, item: Item) -> Any:
    rows = [row for row in env.db.judgments(project) if row.item.id == item.id]
    assert len(rows) == 1, f"expected one judgment of item {item.id}, found {len(rows)}"
    return rows[0]


def posts(page: Page) -> list[str]:
    """A list that fills with the URL of every POST the page sends from now on."""
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)
    return sent


def check_export(env: Env, boss: Page, project: str, expected: list[dict[str, Any]], shot: str | None = None) -> None:
    """`export_records` and the stats page's download link both give exactly `expected` (plus provenance)."""
    kind, records = export_records(env.db, project)
    rows = env.db.judgments(project)
    assert [{k: v for k, v in r.items() if k not in ("item_id", "annotator", "duration_ms")} for r in records] == (
        expected
    )
    judged = {row.item.id: row for row in rows}
    for record in records:
        assert record["annotator"] == "ann"
        assert record["duration_ms"] == judged[record["item_id"]].judgment.duration_ms >= 0
    boss.goto(f"/projects/{env.projects[project]}/stats")
    assert boss.locator("#annotator-stats tbody tr td").first.text_content() == "ann"
    if shot:
        screenshot(boss, shot)
    with boss.expect_download() as info:
        boss.click("text=Download judgments (JSONL)")
    download = info.value
    assert download.suggested_filename == f"{project}-{kind}.jsonl"
    lines = Path(download.path()).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records


def pair_record(item: Item, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The export a pairwise payload must give, written out here independently of the app's own code."""
    if payload["outcome"] != "preferred":
        return []  # both bad / can't tell: no order to learn from; ties are left out of exports by default
    best, strength = payload["preferred"], payload["strength"]
    record = {"prompt": item.prompt, "chosen": item.responses[best], "rejected": item.responses[1 - best]}
    return [record | {"strength": strength, "margin": strength / 3}]  # TRL's margin: Llama 2's 1/3, 2/3, 1


# --- signing in and access ----------------------------------------------------------------------------------


def test_login_redirects_back_and_rejects_a_wrong_password(env: Env) -> None:
    page = env.new_page()
    project = env.projects["thumbs"]
    page.goto(f"/projects/{project}")
    assert page.url == f"{env.base_url}/login?next=/projects/{project}"
    page.fill("#login input[name=name]", "ann")
    page.fill("#login input[name=password]", "not the password")
    with page.expect_navigation():
        page.click("#login button[type=submit]")
    assert page.locator(".error").text_content() == "Wrong name or password."
    assert page.locator("header .who").count() == 0
    page.fill("#login input[name=name]", "ann")
    page.fill("#login input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("#login button[type=submit]")
    assert page.url == f"{env.base_url}/projects/{project}"
    assert page.locator(".task").get_attribute("data-task") == "thumbs"
    page.context.close()


def test_a_cross_site_form_cannot_sign_the_browser_in(env: Env) -> None:
    """Login CSRF: another site's page posts a text/plain form shaped as JSON to /api/login; the browser must
    not come back signed in as the attacker's account."""
    page = env.new_page()
    page.set_content(
        f"""<form id="f" method="post" enctype="text/plain" action="{env.base_url}/api/login">
        <input name='{{"name": "other", "password": "{PASSWORD}", "pad": "' value='"}}'></form>"""
    )
    with page.expect_navigation() as navigation:
        page.evaluate("document.getElementById('f').submit()")
    assert navigation.value.status in (403, 415)
    page.goto("/")
    assert page.url == f"{env.base_url}/login?next=/" and page.locator("header .who").count() == 0
    page.context.close()


def test_annotator_cannot_open_a_project_not_assigned_to_them(env: Env, ann: Page) -> None:
    ann.goto("/")
    listed = ann.locator("table.grid tbody td:first-child").all_text_contents()
    assert "secret" not in listed and "pairwise" in listed
    secret = env.projects["secret"]
    for path, detail in [
        (f"/projects/{secret}", "this project is not assigned to you"),
        (f"/projects/{secret}/chat", "this project is not assigned to you"),
        ("/admin", "admins only"),
        (f"/projects/{secret}/export", "admins only"),
        (f"/projects/{secret}/stats", "admins only"),
    ]:
        response = ann.goto(path)
        assert (response.status, response.json()) == (403, {"detail": detail}), path
    # A forged submission to the secret project's item is refused and stores nothing.
    ann.goto(f"/projects/{env.projects['thumbs']}")
    csrf = ann.get_attribute("form#judgment input[name=csrf]", "value")
    (item,) = env.db.items("secret")
    response = ann.request.post(f"/projects/{secret}/items/{item.id}", form={"csrf": csrf, "choice": "up"})
    assert response.status == 403
    assert env.db.judgments("secret") == []


def test_a_reply_with_markup_is_shown_as_literal_text(env: Env, ann: Page) -> None:
    response = ann.goto(f"/projects/{env.projects['xss']}")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert ann.evaluate("typeof window.pwned") == "undefined"
    assert ann.evaluate("window.pwned") is None
    assert ann.locator("main b, main script").count() == 0
    assert ann.locator(".prompt .text").text_content() == XSS
    item = current_item(env, ann)
    order = shown_order(env, ann, item)
    slot = order.index(0)
    assert ann.locator(f".reply[data-slot='{slot}'] .text").text_content() == XSS
    assert ann.locator(f".reply[data-slot='{slot}'] .text").inner_text() == XSS  # rendered text, not markup


# --- each task, with the mouse and with the keyboard ---------------------------------------------------------


def test_pairwise_with_mouse_and_keyboard(env: Env, ann: Page, boss: Page) -> None:
    ann.goto(f"/projects/{env.projects['pairwise']}")
    orders, expected = [], []

    item = current_item(env, ann)
    order = shown_order(env, ann, item)
    screenshot(ann, "pairwise")
    submits(ann, lambda: ann.click("button[value='B:1']"))  # "B is slightly better"
    payload = {"outcome": "preferred", "preferred": order[1], "strength": 1}
    row = judgment_of(env, "pairwise", item)
    assert row.payload == payload and row.judgment.display_order == order
    orders.append(order)
    expected += pair_record(item, payload)

    for key, outcome in [
        ("1", {"outcome": "preferred", "slot": 0, "strength": 3}),
        ("5", {"outcome": "preferred", "slot": 1, "strength": 2}),
        ("t", {"outcome": "tie", "preferred": None, "strength": None}),
        ("b", {"outcome": "both_bad", "preferred": None, "strength": None}),
        ("c", {"outcome": "unsure", "preferred": None, "strength": None}),
    ]:
        item = current_item(env, ann)
        order = shown_order(env, ann, item)
        submits(ann, lambda key=key: ann.keyboard.press(key))
        payload = dict(outcome)
        if "slot" in payload:
            payload["preferred"] = order[payload.pop("slot")]
        assert judgment_of(env, "pairwise", item).payload == payload, key
        orders.append(order)
        expected += pair_record(item, payload)

    assert ann.locator("#done").is_visible()
    assert {tuple(o) for o in orders} == {(0, 1), (1, 0)}  # both shuffles occurred, so the mapping was exercised
    check_export(env, boss, "pairwise", expected, shot="stats")


def test_rank_by_dragging_and_by_keyboard(env: Env, ann: Page, boss: Page) -> None:
    ann.goto(f"/projects/{env.projects['rank']}")
    cards = ann.locator(".rank-card")
    slots = lambda: cards.evaluate_all("cs => cs.map(c => Number(c.dataset.slot))")  # noqa: E731
    ranks = lambda: cards.evaluate_all("cs => cs.map(c => c.querySelector('select').value)")  # noqa: E731

    # Mouse: drag the last card above the first; the cards' order sets the ranks.
    item = current_item(env, ann)
    order = shown_order(env, ann, item)
    assert slots() == [0, 1, 2]
    cards.nth(2).drag_to(cards.nth(0), target_position={"x": 40, "y": 4})
    assert slots() == [2, 0, 1]
    assert ranks() == ["1", "2", "3"]
    screenshot(ann, "rank")
    submits(ann, lambda: ann.click("button[type=submit][data-key=Enter]"))
    first = [0, 0, 0]
    for rank, slot in enumerate([2, 0, 1], start=1):
        first[order[slot]] = rank
    assert judgment_of(env, "rank", item).payload == {"ranks": first}
    expected = [{"prompt": item.prompt, "responses": item.responses, "ranks": first}]

    # Keyboard: type a rank per selected card (selection moves on), arrows move the selection; ties allowed.
    item = current_item(env, ann)
    order = shown_order(env, ann, item)
    for key in ["3", "1", "ArrowUp", "ArrowDown", "3"]:
        ann.keyboard.press(key)
    assert ranks() == ["3", "1", "3"]
    submits(ann, lambda: ann.keyboard.press("Enter"))
    second = [0, 0, 0]
    for slot, rank in enumerate([2, 1, 2]):  # 3, 1, 3 as dense ranks
        second[order[slot]] = rank
    assert judgment_of(env, "rank", item).payload == {"ranks": second}
    expected.append({"prompt": item.prompt, "responses": item.responses, "ranks": second})

    assert ann.locator("#done").is_visible()
    check_export(env, boss, "rank", expected)


def test_likert_with_mouse_and_keyboard(env: Env, ann: Page, boss: Page) -> None:
    ann.goto(f"/projects/{env.projects['likert']}")

    item = current_item(env, ann)
    ann.click("label:has(input[name=score][value='5'])")
    ann.click("label:has(input[value=hallucination])")
    ann.click("label:has(input[value=fails_to_follow_instruction])")
    screenshot(ann, "likert")
    submits(ann, lambda: ann.click("text=Submit rating"))
    first = {"score": 5, "flags": ["fails_to_follow_instruction", "hallucination"]}
    assert first["flags"] == [f for f in INSTRUCTGPT_FLAGS if f in first["flags"]]
    assert judgment_of(env, "likert", item).payload == first
    expected = [{"prompt": item.prompt, "response": item.responses[0], **first}]

    item = current_item(env, ann)
    sent = posts(ann)
    ann.keyboard.press("Enter")  # no score chosen yet: the form is not sent
    ann.wait_for_timeout(300)
    assert sent == [] and env.db.judgments("likert")[-1].item.id != item.id
    ann.keyboard.press("3")
    assert ann.is_checked("input[name=score][value='3']")
    submits(ann, lambda: ann.keyboard.press("Enter"))
    assert judgment_of(env, "likert", item).payload == {"score": 3, "flags": []}
    expected.append({"prompt": item.prompt, "response": item.responses[0], "score": 3, "flags": []})

    assert ann.locator("#done").is_visible()
    check_export(env, boss, "likert", expected)


def test_thumbs_with_mouse_and_keyboard(env: Env, ann: Page, boss: Page) -> None:
    ann.goto(f"/projects/{env.projects['thumbs']}")
    expected = []
    for index, act in enumerate([lambda: ann.click("button[value=up]"), lambda: ann.keyboard.press("d")]):
        item = current_item(env, ann)
        assert ann.locator(".reply .text").text_content() == item.responses[0]
        if index == 0:
            screenshot(ann, "thumbs")
        submits(ann, act)
        up = index == 0
        assert judgment_of(env, "thumbs", item).payload == {"up": up}
        expected.append({"prompt": item.prompt, "completion": item.responses[0], "label": up})
    assert ann.locator("#done").is_visible()
    check_export(env, boss, "thumbs", expected)


def test_edit_with_mouse_and_keyboard(env: Env, ann: Page, boss: Page) -> None:
    ann.goto(f"/projects/{env.projects['edit']}")
    area = ann.locator("textarea[name=edited]")
    expected = []

    item = current_item(env, ann)
    assert area.input_value() == item.responses[0]  # the reply to improve is prefilled
    area.click()
    ann.keyboard.press("Control+A")
    ann.keyboard.type("  She was very happy.\nEnter only adds a line: u d 1 t  ")
    screenshot(ann, "edit")
    submits(ann, lambda: ann.click("text=Save edit"))
    edited = "She was very happy.\nEnter only adds a line: u d 1 t"
    assert judgment_of(env, "edit", item).payload == {"edited": edited}
    expected.append({"prompt": item.prompt, "original": item.responses[0], "edited": edited})

    item = current_item(env, ann)
    area.focus()
    ann.keyboard.press("Control+A")
    ann.keyboard.type("She was happy.")
    submits(ann, lambda: ann.keyboard.press("Control+Enter"))
    assert judgment_of(env, "edit", item).payload == {"edited": "She was happy."}
    expected.append({"prompt": item.prompt, "original": item.responses[0], "edited": "She was happy."})

    assert ann.locator("#done").is_visible()
    check_export(env, boss, "edit", expected)


def test_demonstration_with_mouse_and_keyboard(env: Env, ann: Page, boss: Page) -> None:
    ann.goto(f"/projects/{env.projects['demonstration']}")
    area = ann.locator("textarea[name=completion]")
    assert ann.locator(".reply").count() == 0
    expected = []

    item = current_item(env, ann)
    area.click()
    ann.keyboard.type("Dear Mr Darcy,\nYou are invited to the Netherfield ball.")
    screenshot(ann, "demonstration")
    submits(ann, lambda: ann.click("text=Save demonstration"))
    text = "Dear Mr Darcy,\nYou are invited to the Netherfield ball."
    assert judgment_of(env, "demonstration", item).payload == {"completion": text}
    expected.append({"prompt": item.prompt, "completion": text})

    item = current_item(env, ann)
    sent = posts(ann)
    area.focus()
    ann.keyboard.press("Control+Enter")  # an empty demonstration is not sent
    ann.wait_for_timeout(300)
    assert sent == []
    ann.keyboard.type("Come dance with us.")
    submits(ann, lambda: ann.keyboard.press("Control+Enter"))
    assert judgment_of(env, "demonstration", item).payload == {"completion": "Come dance with us."}
    expected.append({"prompt": item.prompt, "completion": "Come dance with us."})

    assert ann.locator("#done").is_visible()
    check_export(env, boss, "demonstration", expected)


def test_chat_with_mouse_and_keyboard(env: Env, ann: Page, boss: Page) -> None:
    project = env.projects["chat"]
    ann.goto(f"/projects/{project}")
    assert ann.url == f"{env.base_url}/projects/{project}/chat"
    assert ann.locator(".conversation .hint").text_content() == "Say something to start."
    message = ann.locator("#say input[name=message]")
    expected = []

    # Mouse: type a message, click Send, click "B is much better".
    first_message = "Good morning, Miss Bennet."
    message.click()
    ann.keyboard.type(first_message)
    submits(ann, lambda: ann.click("#say button:not([name])"), timeout=CHAT_TIMEOUT_MS)
    item = current_item(env, ann)
    assert item.prompt == [{"role": "user", "content": first_message}]
    assert len(item.responses) == 2 and item.source["model"] == "tiny-austen"
    assert item.responses[0] != item.responses[1]  # two samples (different seeds), told apart on the page
    order = shown_order(env, ann, item)
    submits(ann, lambda: ann.click("button[value='B:3']"))
    payload = {"outcome": "preferred", "preferred": order[1], "strength": 3}
    assert judgment_of(env, "chat", item).payload == payload
    expected += pair_record(item, payload)
    picked = item.responses[order[1]]
    assert ann.locator(".conversation .message.assistant .text").all_text_contents() == [picked]

    # Keyboard: the message box has the focus; Enter sends (not "New conversation"), then t picks a tie.
    second_message = "And how is your sister?"
    sync_api.expect(message).to_be_focused()
    ann.keyboard.type(second_message)
    submits(ann, lambda: ann.keyboard.press("Enter"), timeout=CHAT_TIMEOUT_MS)
    item = current_item(env, ann)
    assert item.prompt == [
        {"role": "user", "content": first_message},
        {"role": "assistant", "content": picked},
        {"role": "user", "content": second_message},
    ]
    order = shown_order(env, ann, item)
    screenshot(ann, "chat")
    submits(ann, lambda: ann.keyboard.press("t"))
    payload = {"outcome": "tie", "preferred": None, "strength": None}
    assert judgment_of(env, "chat", item).payload == payload
    expected += pair_record(item, payload)
    texts = ann.locator(".conversation .message.assistant .text").all_text_contents()
    assert texts == [picked, item.responses[order[0]]]  # a tie goes on from the reply shown first

    # "New conversation" starts afresh (the empty required message box does not block it).
    submits(ann, lambda: ann.click("#say button[name=new]"))
    assert ann.locator(".conversation .hint").text_content() == "Say something to start."

    check_export(env, boss, "chat", expected)


# --- the admin's flow ---------------------------------------------------------------------------------------


def test_admin_creates_user_and_project_imports_items_and_assigns(env: Env, tmp_path: Path, boss: Page) -> None:
    page = boss
    page.goto("/admin")
    # A user.
    page.fill("#add-user input[name=name]", "newbie")
    page.fill("#add-user input[name=password]", PASSWORD)
    page.select_option("#add-user select[name=role]", "annotator")
    submits(page, lambda: page.click("#add-user button[type=submit]"))
    assert "newbie (annotator)" in page.locator("main ul").inner_text()
    newbie = env.db.authenticate("newbie", PASSWORD)
    assert newbie is not None and newbie.role == "annotator"
    # A project.
    page.fill("#add-project input[name=name]", "imported")
    page.select_option("#add-project select[name=task]", "thumbs")
    page.fill("#add-project textarea[name=instructions]", "Be kind.")
    submits(page, lambda: page.click("#add-project button[type=submit]"))
    project = env.db.project("imported")
    assert (project.task, project.per_item, project.instructions) == ("thumbs", 1, "Be kind.")
    row = page.locator("tr[data-project=imported]")
    # A bad file is refused with its file:line and adds nothing.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok", "completion": "fine"}) + "\n" + json.dumps({"prompt": "no"}) + "\n")
    row.locator("input[type=file]").set_input_files(str(bad))
    submits(page, lambda: row.locator("button", has_text="Import").click(), status=400)
    assert "bad.jsonl:2" in page.locator(".error").text_content()
    assert env.db.items("imported") == []
    # A good file.
    good = tmp_path / "items.jsonl"
    rows = [
        {"prompt": "Compliment a dancer.", "completion": "You dance divinely."},
        {"prompt": "Greet a guest.", "responses": ["Welcome to Pemberley."]},
    ]
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    row = page.locator("tr[data-project=imported]")
    row.locator("input[type=file]").set_input_files(str(good))
    submits(page, lambda: row.locator("button", has_text="Import").click())
    items = env.db.items("imported")
    assert [(i.prompt, i.responses) for i in items] == [
        ("Compliment a dancer.", ["You dance divinely."]),
        ("Greet a guest.", ["Welcome to Pemberley."]),
    ]
    # Assign the new annotator.
    row = page.locator("tr[data-project=imported]")
    row.locator("select[name=users]").select_option(["newbie"])
    submits(page, lambda: row.locator("button", has_text="Assign").click())
    assert [p.name for p in env.db.projects(newbie)] == ["imported"]
    assert "imported" not in [p.name for p in env.db.projects(env.db.user(env.users["ann"]))]
    screenshot(page, "admin")

    # The annotator now sees the project and can label it.
    labeller = login(env, "newbie")
    assert labeller.locator("table.grid tbody td:first-child").all_text_contents() == ["imported"]
    submits(labeller, lambda: labeller.click("a.button:has-text('Label')"))
    assert labeller.locator(".instructions").text_content() == "Be kind."
    for key in ("u", "d"):
        submits(labeller, lambda key=key: labeller.keyboard.press(key))
    assert labeller.locator("#done").is_visible()
    assert [(r.annotator, r.item.id, r.payload) for r in env.db.judgments("imported")] == [
        ("newbie", items[0].id, {"up": True}),
        ("newbie", items[1].id, {"up": False}),
    ]
    labeller.goto("/")
    assert labeller.locator("table.grid tbody tr td").nth(3).text_content() == "2"
    labeller.context.close()
    # The admin page's export link downloads the two records.
    page.goto("/admin")
    with page.expect_download() as info:
        page.locator("tr[data-project=imported] a", has_text="Export").click()
    lines = Path(info.value.path()).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == export_records(env.db, "imported")[1]
    assert [json.loads(line)["label"] for line in lines] == [True, False]
