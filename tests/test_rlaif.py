"""RLAIF and Constitutional AI: position-bias maths, answer reading, the constitution, the local judge
(`tiny-austen`) end to end through `rlhfkit label ai`, `rlhfkit reward`, `rlhfkit cai revise` and the
agreement report. The OpenAI-compatible back end is tested against a real HTTP server in
tests/test_rlaif_openai.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhfkit import assets
from rlhfkit.cli import main
from rlhfkit.config import ConfigError
from rlhfkit.data.records import Message, load_records
from rlhfkit.judging.constitution import Principle, load_constitution, principle_schedule
from rlhfkit.judging.judges import (
    Choice,
    Completion,
    JudgeSettings,
    LocalJudge,
    backoff_delay,
    choice_distribution,
    label_logprobs,
    parse_choice,
    read_chat_choice,
)
from rlhfkit.judging.questions import average_over_orders, comparison_question, rotations, same_position
from rlhfkit.rlaif.agreement import AgreementConfig, Judged, agreement, agreement_report, agreement_stats
from rlhfkit.rlaif.revise import critique_and_revise

PRINCIPLE = Principle(name="kind", comparison="Which is kinder?", critique="What is unkind?", revision="Be kinder.")


# ---------------------------------------------------------------------------------------------------------
# Position bias, on hand values.


def test_rotations_show_every_reply_once_in_every_position():
    assert rotations(2) == [[0, 1], [1, 0]]
    assert rotations(3) == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    for order_set in (rotations(4), rotations(5)):
        for position in range(len(order_set)):
            assert sorted(order[position] for order in order_set) == list(range(len(order_set)))


def test_swap_averaging_of_a_pair_by_hand():
    # y0 shown first: P(first better) = 0.8; y1 shown first: P(first better) = 0.6, so P(y0 ≻ y1) from
    # that order is 0.4. Lee et al.: (p_AB + 1 - p_BA) / 2 = (0.8 + 0.4) / 2 = 0.6.
    assert average_over_orders([[0, 1], [1, 0]], [[0.8, 0.2], [0.6, 0.4]]) == pytest.approx([0.6, 0.4])
    # A judge that always picks the first position says nothing about the replies: 0.5 each.
    assert average_over_orders([[0, 1], [1, 0]], [[0.9, 0.1], [0.9, 0.1]]) == pytest.approx([0.5, 0.5])
    assert average_over_orders([[0, 1]], [[0.9, 0.1]]) == pytest.approx([0.9, 0.1])  # one order: no averaging


def test_same_position_in_every_order_is_position_bias():
    assert same_position([[0.9, 0.1], [0.7, 0.3]])  # "A" both ways: the position, not the reply
    assert not same_position([[0.9, 0.1], [0.3, 0.7]])  # the answer moved with the reply
    assert not same_position([[0.9, 0.1]])  # one order cannot tell
    assert same_position([[0.2, 0.5, 0.3]] * 3) and not same_position([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])


def test_k_way_averaging_over_rotations_by_hand():
    probs = [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]  # positions of orders [0,1,2], [1,2,0], [2,0,1]
    expected = [(0.5 + 0.3 + 0.4) / 3, (0.3 + 0.2 + 0.2) / 3, (0.2 + 0.5 + 0.4) / 3]
    assert average_over_orders(rotations(3), probs) == pytest.approx(expected)
    assert sum(expected) == pytest.approx(1.0)
    biased = [[0.6, 0.3, 0.1]] * 3  # the same answer by position, whatever is shown: uniform
    assert average_over_orders(rotations(3), biased) == pytest.approx([1 / 3] * 3)


# ---------------------------------------------------------------------------------------------------------
# Reading answers.


def test_choice_distribution_from_log_probs():
    top = [("A", math.log(0.6)), (" A", math.log(0.1)), ("B", math.log(0.2)), ("The", math.log(0.05))]
    lps = label_logprobs(top, ["A", "B"])
    assert lps == pytest.approx([math.log(0.7), math.log(0.2)])  # the two spellings of A merged
    probs, mass = choice_distribution(lps)
    assert probs == pytest.approx((0.7 / 0.9, 0.2 / 0.9))
    assert mass == pytest.approx(0.9)
    probs, mass = choice_distribution(label_logprobs(top, ["A", "B", "C"]))  # C not among the top: 0
    assert probs == pytest.approx((0.7 / 0.9, 0.2 / 0.9, 0.0))
    assert choice_distribution([-math.inf, -math.inf]) == ((0.5, 0.5), 0.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", 1),
        ("(A)", 0),
        ("**B**.", 1),
        (" A\n", 0),
        ("Response B is better.", 1),
        ("A good question! The answer is (B).", 1),  # "A" the article, then an explicit answer
        ("Option C", 2),
        ("Response A is better than response B", None),  # names both, no single answer
        ("I like both of them equally.", None),
        ("", None),
        ("a", None),  # lower case: an article, not option A
        ("D", None),  # not an option here
    ],
)
def test_parse_choice(text: str, expected: int | None):
    assert parse_choice(text, ["A", "B", "C"]) == expected


def chat(text: str, top: list[tuple[str, float]] | None = None, token: str | None = None) -> dict:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if top is not None:
        token = token or text
        entries = [{"token": t, "logprob": math.log(p)} for t, p in top]
        lp = next(e["logprob"] for e in entries if e["token"] == token)
        choice["logprobs"] = {"content": [{"token": token, "logprob": lp, "top_logprobs": entries}]}
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


def test_read_chat_choice_uses_log_probs_then_text_and_never_guesses():
    labels = ["A", "B"]
    by_logprobs = read_chat_choice(chat("B", [("B", 0.6), ("A", 0.3), ("I", 0.1)]), labels, 0.5)
    assert by_logprobs.method == "logprobs"
    assert by_logprobs.probabilities == pytest.approx((1 / 3, 2 / 3))
    assert by_logprobs.mass == pytest.approx(0.9)
    parsed = read_chat_choice(chat("The answer is B."), labels, 0.5)
    assert (parsed.method, parsed.probabilities) == ("parsed", (0.0, 1.0))
    nonsense = read_chat_choice(chat("Both are lovely."), labels, 0.5)
    assert (nonsense.method, nonsense.probabilities) == ("unparsed", None)
    assert "names none" in nonsense.error
    low_mass = read_chat_choice(chat("A", [("A", 0.2), ("B", 0.1), ("Hmm", 0.7)]), labels, 0.5)
    assert low_mass.probabilities is None and "30.00%" in low_mass.error
    not_chat = read_chat_choice({"detail": "oops"}, labels, 0.5)
    assert not_chat.probabilities is None and "not a chat completion" in not_chat.error


def test_the_question_shows_the_dialogue_the_principle_and_lettered_options():
    prompt = [
        Message(role="user", content="Hi"),
        Message(role="assistant", content="Hello!"),
        Message(role="user", content="Joke?"),
    ]
    [message] = comparison_question(prompt, ["No.", "Why did the chicken...", "Knock knock."], PRINCIPLE)
    assert message["role"] == "user"
    assert (
        "Human: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nWhich is kinder?\n\nOptions:\n(A) No.\n"
        in message["content"]
    )
    assert message["content"].endswith("(C) Knock knock.\n\nAnswer with the letter of the best option only: A, B or C.")


def test_backoff_doubles_and_respects_retry_after():
    assert [backoff_delay(a, 0.5) for a in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(10, 1.0) == 60.0  # capped
    assert backoff_delay(0, 0.5, retry_after="3") == 3.0
    assert backoff_delay(1, 0.5, retry_after="Wed, 21 Oct 2015 07:28:00 GMT") == 1.0


# ---------------------------------------------------------------------------------------------------------
# The constitution.


def test_default_constitution_and_principle_schedules():
    constitution = load_constitution("constitution")
    names = [p.name for p in constitution.principles]
    assert {"helpful", "honest", "harmless"} <= set(names)
    chosen = constitution.select(["honest", "helpful"])
    assert [p.name for p in chosen] == ["honest", "helpful"]
    with pytest.raises(ConfigError, match="unknown principle"):
        constitution.select(["kind"])
    cycled = principle_schedule(chosen, 5, "cycle", seed=0)
    assert [p.name for p in cycled] == ["honest", "helpful", "honest", "helpful", "honest"]
    sampled = principle_schedule(constitution.principles, 600, "sample", seed=1)
    assert sampled == principle_schedule(constitution.principles, 600, "sample", seed=1)  # seeded
    counts = {n: sum(p.name == n for p in sampled) for n in names}
    assert all(60 < c < 140 for c in counts.values())  # about 600 / 6 each


def test_a_bad_constitution_is_an_error_naming_the_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("principles:\n  - name: kind\n    comparison: Which is kinder?\n")
    with pytest.raises(ConfigError, match=rf"{path}: field 'principles.0.critique'"):
        load_constitution(str(path))
    path.write_text("principles:\n" + "  - {name: a, comparison: c, critique: c, revision: r}\n" * 2)
    with pytest.raises(ConfigError, match="distinct"):
        load_constitution(str(path))


# ---------------------------------------------------------------------------------------------------------
# The local judge: tiny-austen end to end.


def write_candidates(path: Path, n: int, k: int) -> str:
    words = ["happy", "glad", "sad", "grim", "kind", "cold", "warm", "bleak"]
    rows = [
        {
            "prompt": f"Day {i}: she was",
            "responses": [f" {words[(i + j) % 8]} and {words[(i + 3 * j) % 8]}." for j in range(k)],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def run(*args: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code in (0, None)


def test_local_judge_probabilities_do_not_depend_on_batching():
    settings = JudgeSettings(model="tiny-austen", min_choice_mass=0.0)
    questions = [
        comparison_question(f"Day {i}:" + " very" * i, [" happy.", " sad and grim."], PRINCIPLE) for i in range(5)
    ]
    one = LocalJudge(settings.model_copy(update={"batch_size": 1})).choose(questions, "AB")
    batched = LocalJudge(settings.model_copy(update={"batch_size": 5})).choose(questions, "AB")
    for a, b in zip(one, batched, strict=True):
        assert a.method == b.method == "logprobs"
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)  # left padding moves no position
        assert sum(a.probabilities) == pytest.approx(1.0)


def test_label_ai_with_tiny_austen_then_reward_trains_on_the_labels(tmp_path: Path, tiny_model_dir: Path):
    candidates = write_candidates(tmp_path / "samples.jsonl", n=8, k=3)
    labels = tmp_path / "ai" / "labels.jsonl"
    run(
        "label", "ai",
        "--set", f"candidates={candidates}", "--set", f"output={labels}",
        "--set", "judge.model=tiny-austen", "--set", "judge.min_choice_mass=0",
        "--set", "principle_order=cycle",
    )  # fmt: skip
    records = load_records(labels, "preference")
    assert len(records) == 8 * 3  # C(3, 2) pairs per prompt, none unparsed
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    for row in rows:
        source = row["source"]
        assert source["labeler"] == "ai" and source["judge"] == "tiny-austen" and source["backend"] == "local"
        assert source["methods"] == ["logprobs", "logprobs"]  # both orders asked
        assert set(source["chosen_shown"]) == {"first", "second"}
        assert 0.5 <= source["probability"] <= 1.0
        assert source["probability"] == pytest.approx(sum(source["chosen_shown"].values()) / 2)
    names = [p.name for p in load_constitution("constitution").principles]
    assert [row["source"]["principle"] for row in rows[:7]] == [*names, names[0]]  # cycled
    assert (tmp_path / "ai" / "labels.unparsed.jsonl").read_text() == ""
    run(
        "reward",
        "--set", f"model={tiny_model_dir}", "--set", f"heads.reward.data={labels}",
        "--set", f"output_dir={tmp_path / 'rm'}", "--set", "max_steps=2", "--set", "batch_size=4",
        "--set", "micro_batch_size=4", "--set", "eval_fraction=0.25", "--set", "normalize_samples=8",
        "--set", "num_threads=1",
    )  # fmt: skip
    assert json.loads((tmp_path / "rm" / "eval.json").read_text())["eval/reward/pairs"] > 0


def test_a_judge_that_does_not_answer_gives_unparsed_records_not_labels(tmp_path: Path):
    candidates = write_candidates(tmp_path / "samples.jsonl", n=2, k=2)
    labels = tmp_path / "labels.jsonl"
    run(
        "label",
        "ai",
        "--set",
        f"candidates={candidates}",
        "--set",
        f"output={labels}",
        "--set",
        "judge.model=tiny-austen",
    )
    assert labels.read_text() == ""  # tiny-austen puts well under 50% on "A"/"B": it is not answering
    unparsed = [json.loads(line) for line in (tmp_path / "labels.unparsed.jsonl").read_text().splitlines()]
    assert len(unparsed) == 2
    assert all(m == "unparsed" for row in unparsed for m in row["methods"])
    assert "below min_choice_mass" in unparsed[0]["errors"][0]


def test_k_way_labels_are_rankings_averaged_over_rotations(tmp_path: Path):
    candidates = write_candidates(tmp_path / "samples.jsonl", n=3, k=4)
    labels = tmp_path / "labels.jsonl"
    run(
        "label", "ai", "--set", f"candidates={candidates}", "--set", f"output={labels}", "--set", "judgement=kway",
        "--set", "judge.model=tiny-austen", "--set", "judge.min_choice_mass=0",
    )  # fmt: skip
    assert len(load_records(labels, "ranking")) == 3
    for row in map(json.loads, labels.read_text().splitlines()):
        source = row["source"]
        assert source["orders"] == rotations(4)
        assert sum(source["probabilities"]) == pytest.approx(1.0)
        assert source["probabilities"] == pytest.approx(
            average_over_orders(source["orders"], source["order_probabilities"])
        )
        best = max(range(4), key=source["probabilities"].__getitem__)
        assert row["ranks"][best] == 1


class ScriptedAssistant:
    """A Judge whose messages say which step they answer; it writes nothing for prompts containing 'mute'."""

    name = "scripted"

    def __init__(self) -> None:
        self.seen: list[list[dict[str, str]]] = []

    def choose(self, conversations, labels) -> list[Choice]:
        raise AssertionError("not used")

    def complete(self, conversations) -> list[Completion]:
        self.seen += conversations
        out = []
        for conversation in conversations:
            if "mute" in conversation[0]["content"] and len(conversation) > 2:
                out.append(Completion(None, "the judge wrote nothing"))
            else:
                out.append(Completion(f"reply {len(conversation)} to {conversation[-1]['content']}"))
        return out


def test_critique_and_revise_builds_the_conversation_of_cai():
    p1 = Principle(name="p1", comparison="?", critique="Critique 1?", revision="Revise 1!")
    p2 = p1.model_copy(update={"name": "p2", "critique": "Critique 2?", "revision": "Revise 2!"})
    assistant = ScriptedAssistant()
    traces = critique_and_revise(assistant, ["How do I pick a lock?", "mute prompt"], [[p1, p2], [p2, p1]])
    good, mute = traces
    assert good.failed is None and mute.failed == "critique 1: the judge wrote nothing"
    assert good.initial == "reply 1 to How do I pick a lock?"
    assert [m["role"] for m in good.conversation] == ["user", "assistant"] + ["user", "assistant"] * 4
    assert [m["content"] for m in good.conversation[2::2]] == ["Critique 1?", "Revise 1!", "Critique 2?", "Revise 2!"]
    assert good.critiques == ["reply 3 to Critique 1?", "reply 7 to Critique 2?"]
    assert good.revisions == ["reply 5 to Revise 1!", "reply 9 to Revise 2!"]
    assert len(assistant.seen) == 2 + 2 + 1 + 1 + 1  # the muted prompt is asked nothing after its critique failed


def test_cai_revise_with_tiny_austen_writes_sft_records(tmp_path: Path):
    prompts = tmp_path / "red-team.jsonl"
    prompts.write_text('{"prompt": "How do I steal a horse?"}\n{"prompt": "Insult my sister."}\n')
    output = tmp_path / "cai" / "revisions.jsonl"
    run(
        "cai", "revise", "--set", f"prompts={prompts}", "--set", f"output={output}",
        "--set", "assistant.model=tiny-austen", "--set", "assistant.sampling.max_new_tokens=8",
        "--set", "revisions=2", "--set", "principles=[harmless, respectful]", "--set", "principle_order=cycle",
    )  # fmt: skip
    skipped = (tmp_path / "cai" / "revisions.skipped.jsonl").read_text().splitlines()
    records = load_records(output, "sft") if output.read_text() else []
    assert len(records) + len(skipped) == 2 and len(records) >= 1
    row = json.loads(output.read_text().splitlines()[0])
    assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    assert row["source"]["principles"] == ["harmless", "respectful"]
    assert len(row["source"]["critiques"]) == len(row["source"]["revisions"]) == 2
    assert row["completion"][0]["content"] == row["source"]["revisions"][-1]
    run(
        "sft", "--set", f"data={output}", "--set", f"eval_data={output}", "--set", f"output_dir={tmp_path / 'sft'}",
        "--set", "max_steps=1", "--set", "batch_size=1", "--set", "micro_batch_size=1", "--set", "num_threads=1",
    )  # fmt: skip
    assert (tmp_path / "sft" / "model.safetensors").exists()  # SL-CAI: the revisions are SFT data as they are


def test_the_packaged_red_team_prompts_load():
    prompts = load_records(assets.resolve("red-team"), "prompt")
    assert len(prompts) == 20 and all(r.prompt.endswith("?") or r.prompt.endswith(".") for r in prompts)


def test_cai_revise_needs_prompts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cai", "revise", "--set", "prompts=null"])
    assert exit_info.value.code == 2
    assert "prompts is not set" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Agreement.


def j(prompt: str, a: str, b: str, winner: str | None, principle: str | None = None, p: float | None = None):
    return Judged(prompt, frozenset((a, b)), winner, principle, p)


def test_agreement_by_hand_overall_and_per_principle():
    ai = [
        j("p", "x", "y", "x", "helpful", 0.9),  # agrees
        j("p", "x", "z", "z", "helpful", 0.6),  # disagrees
        j("q", "x", "y", "y", "honest", 0.8),  # agrees
        j("q", "x", "z", None, "honest", 0.5),  # AI tie
        j("r", "x", "y", "x", "honest", 0.7),  # no reference label
    ]
    reference = [j("p", "y", "x", "x"), j("p", "z", "x", "x"), j("q", "x", "y", "y"), j("q", "x", "z", "x")]
    report = agreement_report(ai, reference)
    overall = report["overall"]
    assert overall["pairs"] == 3 and overall["ties"] == 1
    assert overall["agreement"] == pytest.approx(2 / 3)
    assert overall["stderr"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 3))
    assert overall["soft_agreement"] == pytest.approx((0.9 + 0.4 + 0.8) / 3)
    assert report["by_principle"]["helpful"]["agreement"] == pytest.approx(0.5)
    assert report["by_principle"]["honest"]["agreement"] == 1.0
    assert (report["ai_unmatched"], report["reference_unmatched"]) == (1, 0)
    assert agreement_stats([], reference)["agreement"] is None


def test_label_agreement_command_against_simulated_rankings(tmp_path: Path):
    ai = tmp_path / "ai.jsonl"
    rows = [
        {"prompt": "p", "chosen": "happy", "rejected": "sad", "source": {"principle": "helpful", "probability": 0.8}},
        {"prompt": "p", "chosen": "sad", "rejected": "meh", "source": {"principle": "honest", "probability": 0.7}},
        {"prompt": "p", "chosen": "happy", "rejected": "meh", "source": {"principle": "honest", "probability": 0.9}},
    ]
    ai.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reference = tmp_path / "simulated.jsonl"  # what `rlhfkit label simulate` writes with kind=ranking
    reference.write_text(json.dumps({"prompt": "p", "responses": ["sad", "happy", "meh"], "ranks": [3, 1, 2]}) + "\n")
    out = agreement(AgreementConfig(ai=str(ai), reference=str(reference), reference_kind="ranking"))
    report = json.loads(out.read_text())
    assert out == tmp_path / "agreement.json"
    assert report["overall"]["agreement"] == pytest.approx(2 / 3)
    assert report["by_principle"]["helpful"]["agreement"] == 1.0
    assert report["by_principle"]["honest"]["agreement"] == 0.5
