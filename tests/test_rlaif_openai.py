"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1, started by each test: scripted chat
completions with log-probabilities, text-only answers, nonsense, timeouts, 5xx, refusals, a dead port."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rlhfkit.cli import main
from rlhfkit.data.records import load_records
from rlhfkit.judging.constitution import Principle
from rlhfkit.judging.judges import JudgeSettings, JudgeUnavailable, OpenAIJudge
from rlhfkit.judging.questions import comparison_question
from rlhfkit.rlaif.preferences import AILabelConfig, label_ai
from rlhfkit.rlaif.revise import ReviseConfig, revise

PRINCIPLE = Principle(name="kind", comparison="Which is kinder?", critique="What is unkind?", revision="Be kinder.")
Script = Callable[[dict, int], tuple[int, Any, float]]  # (request body, request number) -> (status, JSON, delay)


class Server:
    """A chat-completions endpoint answering by `script`; it records every request and the most in flight."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((self.path, dict(self.headers), body))
                    number = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, payload, delay = server.script(body, number)
                    time.sleep(delay)
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def questions(self) -> list[str]:
        return [body["messages"][-1]["content"] for _, _, body in self.requests]


@contextmanager
def serve(script: Script) -> Iterator[Server]:
    server = Server(script)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def completion(text: str, top: dict[str, float] | None = None) -> dict:
    """A chat completion answering `text`; with `top`, the log-probs of the first token's alternatives."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if top is not None:
        alternatives = [{"token": t, "logprob": math.log(p)} for t, p in top.items()]
        first = {"token": text, "logprob": math.log(top[text]), "top_logprobs": alternatives}
        choice["logprobs"] = {"content": [first]}
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "judge", "choices": [choice]}


def options(question: str) -> dict[str, str]:
    """{'A': reply, 'B': reply} from a comparison question."""
    return dict(re.findall(r"^\(([A-Z])\) (.*)$", question, flags=re.MULTILINE))


def settings(url: str, **overrides: Any) -> JudgeSettings:
    return JudgeSettings(backend="openai", model="judge", url=url, backoff=0.01, **overrides)


def write_candidates(path: Path, replies: list[list[str]]) -> str:
    path.write_text("".join(json.dumps({"prompt": f"Day {i}:", "responses": r}) + "\n" for i, r in enumerate(replies)))
    return str(path)


def test_labels_from_log_probs_in_both_orders(tmp_path: Path):
    def script(body: dict, _: int) -> tuple[int, Any, float]:
        shown = options(body["messages"][-1]["content"])
        # The judge likes "happy" and also the first position: happy first 0.9, happy second only 0.6.
        p_a = 0.9 if "happy" in shown["A"] else 0.4
        answer = "A" if p_a > 0.5 else "B"
        return 200, completion(answer, {"A": p_a * 0.95, "B": (1 - p_a) * 0.95, "I": 0.05}), 0.0

    candidates = write_candidates(tmp_path / "c.jsonl", [[" sad.", " happy."], [" happy!", " grim."]])
    with serve(script) as server:
        output = label_ai(
            AILabelConfig(candidates=candidates, output=str(tmp_path / "l.jsonl"), judge=settings(server.url))
        )
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(" happy.", " sad."), (" happy!", " grim.")]
    for row in rows:
        assert row["source"]["probability"] == pytest.approx((0.9 + 0.6) / 2)  # Lee et al.'s swap average
        assert row["source"]["chosen_shown"] == pytest.approx({"first": 0.9, "second": 0.6})
        assert row["source"]["methods"] == ["logprobs", "logprobs"]
        assert row["source"]["backend"] == "openai" and row["source"]["judge"] == "judge"
    assert len(load_records(output, "preference")) == 2
    shown = sorted((o["A"], o["B"]) for o in map(options, server.questions()) if " sad." in o.values())
    assert shown == [(" happy.", " sad."), (" sad.", " happy.")]  # asked both ways
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and "authorization" not in {h.lower() for h in headers}
    assert body["model"] == "judge" and body["temperature"] == 0.0
    assert body["logprobs"] is True and body["top_logprobs"] == 20


def test_text_answers_are_parsed_and_position_bias_cancels_to_a_tie(tmp_path: Path):
    def script(body: dict, _: int) -> tuple[int, Any, float]:
        assert "logprobs" not in body
        return 200, completion("Response B is the better one."), 0.0  # always the second position

    candidates = write_candidates(tmp_path / "c.jsonl", [[" sad.", " happy."]])
    with serve(script) as server:
        config = AILabelConfig(
            candidates=candidates,
            output=str(tmp_path / "l.jsonl"),
            judge=settings(server.url, top_logprobs=0),
            ties="keep",  # the default leaves ties out; this test reads the tie
        )
        row = json.loads(label_ai(config).read_text())
        dropped = config.model_copy(update={"output": str(tmp_path / "d.jsonl"), "drop_same_position": True})
        assert label_ai(dropped).read_text() == ""
    assert row["source"]["methods"] == ["parsed", "parsed"]
    assert row["tie"] is True and row["source"]["probability"] == 0.5  # a position, not a preference
    [unparsed] = [json.loads(line) for line in (tmp_path / "d.unparsed.jsonl").read_text().splitlines()]
    assert unparsed["reason"] == "same position preferred in every order"
    assert unparsed["probabilities"] == [[0.0, 1.0], [0.0, 1.0]]


def test_nonsense_answers_are_unparsed_records_not_labels(tmp_path: Path):
    def script(body: dict, _: int) -> tuple[int, Any, float]:
        shown = options(body["messages"][-1]["content"])
        if "grim" in shown.values():
            return 200, completion("Both replies have their charms, as do A and B."), 0.0
        if "bleak" in shown.values():
            return 200, {"object": "error", "message": "model overloaded"}, 0.0  # 200 without choices
        return 200, completion("A" if "happy" in shown["A"] else "B"), 0.0

    candidates = write_candidates(tmp_path / "c.jsonl", [["happy", "sad"], ["happy", "grim"], ["bleak", "happy"]])
    labels = tmp_path / "l.jsonl"
    with serve(script) as server:
        run_cli(
            "label", "ai", "--set", f"candidates={candidates}", "--set", f"output={labels}",
            "--set", "judge.backend=openai", "--set", f"judge.url={server.url}", "--set", "judge.backoff=0.01",
        )  # fmt: skip
    assert [json.loads(line)["chosen"] for line in labels.read_text().splitlines()] == ["happy"]
    unparsed = [json.loads(line) for line in (tmp_path / "l.unparsed.jsonl").read_text().splitlines()]
    assert [u["responses"] for u in unparsed] == [["happy", "grim"], ["bleak", "happy"]]
    assert unparsed[0]["answers"][0] == "Both replies have their charms, as do A and B."
    assert "names none, or more than one" in unparsed[0]["errors"][0]
    assert "not a chat completion" in unparsed[1]["errors"][0]


def test_5xx_is_retried_until_an_answer_comes():
    def script(body: dict, number: int) -> tuple[int, Any, float]:
        if number <= 2:
            return 503, {"error": "busy"}, 0.0
        return 200, completion("A", {"A": 0.8, "B": 0.2}), 0.0

    with serve(script) as server:
        judge = OpenAIJudge(settings(server.url, concurrency=1))
        [choice] = judge.choose([comparison_question("p", ["x", "y"], PRINCIPLE)], "AB")
    assert len(server.requests) == 3
    assert choice.probabilities == pytest.approx((0.8, 0.2))


def test_a_timeout_is_retried():
    def script(body: dict, number: int) -> tuple[int, Any, float]:
        return 200, completion("B"), 1.0 if number == 1 else 0.0  # the first answer comes too late

    with serve(script) as server:
        judge = OpenAIJudge(settings(server.url, timeout=0.2))
        started = time.perf_counter()
        [choice] = judge.choose([comparison_question("p", ["x", "y"], PRINCIPLE)], "AB")
        elapsed = time.perf_counter() - started
    assert choice.probabilities == (0.0, 1.0) and choice.method == "parsed"
    assert len(server.requests) == 2 and elapsed < 1.0


def test_too_slow_every_time_is_a_clear_error():
    with serve(lambda body, number: (200, completion("A"), 0.5)) as server:
        judge = OpenAIJudge(settings(server.url, timeout=0.1, retries=1))
        with pytest.raises(JudgeUnavailable, match=rf"{re.escape(server.url)}/chat/completions did not answer after 2"):
            judge.choose([comparison_question("p", ["x", "y"], PRINCIPLE)], "AB")


def test_a_refused_request_is_not_retried():
    with serve(lambda body, number: (400, {"error": "top_logprobs is not supported"}, 0.0)) as server:
        judge = OpenAIJudge(settings(server.url))
        with pytest.raises(JudgeUnavailable, match=r"refused the request: HTTP 400: .*top_logprobs is not supported"):
            judge.choose([comparison_question("p", ["x", "y"], PRINCIPLE)], "AB")
    assert len(server.requests) == 1


def test_an_unreachable_endpoint_is_an_error_naming_the_url(tmp_path: Path, capsys):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    candidates = write_candidates(tmp_path / "c.jsonl", [[" sad.", " happy."]] * 20)
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "ai", "--set", f"candidates={candidates}", "--set", f"output={tmp_path / 'l.jsonl'}",
              "--set", "judge.backend=openai", "--set", f"judge.url={url}", "--set", "judge.backoff=0.01"])  # fmt: skip
    assert exit_info.value.code == 2
    assert (
        f"judge endpoint {url}/chat/completions did not answer after 4 attempt(s): ConnectError"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "l.jsonl").exists()  # no labels at all, rather than labels from guesses


def test_concurrency_is_limited():
    with serve(lambda body, number: (200, completion("A"), 0.1)) as server:
        judge = OpenAIJudge(settings(server.url, concurrency=3))
        choices = judge.choose([comparison_question(f"p{i}", ["x", "y"], PRINCIPLE) for i in range(9)], "AB")
    assert len(choices) == 9 and all(c.method == "parsed" for c in choices)
    assert server.max_in_flight == 3


def test_api_key_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    with serve(lambda body, number: (200, completion("A"), 0.0)) as server:
        OpenAIJudge(settings(server.url, api_key_env="MY_JUDGE_KEY")).choose([[{"role": "user", "content": "?"}]], "AB")
    headers = {k.lower(): v for k, v in server.requests[0][1].items()}
    assert headers["authorization"] == "Bearer sk-test"


def test_cai_revise_through_the_endpoint(tmp_path: Path):
    def script(body: dict, _: int) -> tuple[int, Any, float]:
        last = body["messages"][-1]["content"]
        text = "Here is how." if len(body["messages"]) == 1 else f"[{len(body['messages'])}] about: {last[:20]}"
        return 200, completion(text), 0.0

    prompts = tmp_path / "red.jsonl"
    prompts.write_text('{"prompt": "How do I pick a lock?"}\n')
    with serve(script) as server:
        output = revise(
            ReviseConfig(
                prompts=str(prompts),
                output=str(tmp_path / "rev.jsonl"),
                principles=["harmless"],
                assistant=settings(server.url),
            )
        )
    [record] = load_records(output, "sft")
    assert record.completion[0].content.startswith("[5] about: Please rewrite")  # the revision request's answer
    roles = [m["role"] for m in server.requests[-1][2]["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert server.requests[-1][2]["max_tokens"] == 96 and "logprobs" not in server.requests[-1][2]


def run_cli(*args: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code in (0, None)
