"""Verifiable rewards: the answer parser, the checkers, the arithmetic task and answers in prompt records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rlhfkit import assets
from rlhfkit.config import ConfigError, UserError
from rlhfkit.data.readers import DataError
from rlhfkit.data.records import PromptRecord, read_prompt_set
from rlhfkit.ppo.train import PPOConfig, ppo
from rlhfkit.scoring import arithmetic
from rlhfkit.scoring.sources import CombinedReward, RewardSource, ScoringError, takes_answer
from rlhfkit.scoring.verifiable import answer_format, contains, correct, final_answer, reference_answer, whole_number


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("5 + 7 = 12\nAnswer: 12", 12),
        ("Answer: 3. Wait, no.\nAnswer: 4", 4),  # the last stated answer counts
        ("**Answer:** 1,234", 1234),
        ("answer = -7", -7),
        ("Answer: $25.", 25),
        ("Answer: 12.0", 12),
        ("The result is \\boxed{42}. I think 41 was close.", 42),  # boxed beats a later loose number
        ("She has 9 apples, then 3 more, so 12 apples.", 12),  # no stated form: the last number
        ("Answer: 2.5", None),  # not a whole number
        ("Answer: 1" + "0" * 40, None),  # overlong: beyond MAX_DIGITS
        ("9" * 5000, None),  # past Python's 4300-digit int parsing limit: still no crash
        ("", None),
        ("no numbers here", None),
    ],
)
def test_final_answer(completion: str, expected: int | None):
    assert final_answer(completion) == expected


def test_format_needs_the_stated_form_on_the_last_line():
    assert answer_format(None, "7 + 5 = 12\nAnswer: 12") == 1.0
    assert answer_format(None, "**Answer:** 12\n\n") == 1.0
    assert answer_format(None, "Answer: 12\nThat was easy.") == 0.0
    assert answer_format(None, "The answer is 12.") == 0.0
    assert answer_format(None, "Answer: twelve") == 0.0
    assert answer_format(None, "") == 0.0


def test_correct_golden():
    assert correct(None, "6 + 6\nAnswer: 12", "12") == 1.0
    assert correct(None, "Answer: 13", "12") == 0.0
    assert correct(None, "", "12") == 0.0
    assert correct(None, "Answer: 1,000", "1000") == 1.0
    assert correct(None, "Answer: 72", "She earns 9 * 8 = 72.\n#### 72") == 1.0  # GSM8K's worked solution


def test_reference_answer_must_be_a_whole_number():
    assert reference_answer(" 1,500 ") == 1500
    with pytest.raises(ValueError, match="'half' is not a whole number"):
        reference_answer("half")


def test_generator_is_seeded_with_disjoint_splits_and_exact_answers():
    train = arithmetic.take(3, "train", 200)
    assert train == arithmetic.take(3, "train", 200)
    assert train != arithmetic.take(4, "train", 200)
    heldout = {p.question for seed in (3, 4) for p in arithmetic.take(seed, "heldout", 100)}
    assert not heldout & {p.question for p in train}
    assert len({p.question for p in train}) == 200
    for problem in train + arithmetic.take(0, "heldout", 50, steps=2):
        assert problem.answer == eval(problem.expression) >= 0  # our own arithmetic
        numbers = [int(n) for n in re.findall(r"\d+", problem.question)]
        assert sorted(numbers) == sorted(int(n) for n in re.findall(r"\d+", problem.expression))


def test_written_task_reads_back_with_answers(tmp_path: Path):
    train, heldout = arithmetic.write_task(tmp_path, train=5, heldout=3, seed=0)
    prompt_set = read_prompt_set(str(heldout))
    assert len(prompt_set.prompts) == 3 and len(read_prompt_set(str(train)).prompts) == 5
    problems = arithmetic.take(0, "heldout", 3)
    assert prompt_set.answers == [str(p.answer) for p in problems]
    assert prompt_set.locations == [f"{heldout}:{line}" for line in (1, 2, 3)]


def test_prompt_records_take_answer_or_solution():
    assert PromptRecord.model_validate({"prompt": "2+2?", "answer": 4}).answer == "4"
    assert PromptRecord.model_validate({"prompt": "2+2?", "solution": "#### 4"}).answer == "#### 4"
    assert PromptRecord.model_validate({"prompt": "2+2?"}).answer is None


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_checker_needs_every_answer(tmp_path: Path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?"}])
    prompt_set = read_prompt_set(path)
    reward = CombinedReward([RewardSource(source="correct"), RewardSource(source="length")], torch.device("cpu"))
    assert reward.checkers == ["correct"]
    with pytest.raises(DataError, match=rf"^{re.escape(path)}:2: field 'answer': missing; the reward correct"):
        reward.check_answers(prompt_set.answers, prompt_set.locations)
    CombinedReward([RewardSource(source="format")], torch.device("cpu")).check_answers(
        prompt_set.answers, prompt_set.locations
    )  # format reads no answer


def test_combined_reward_passes_answers_to_checkers():
    reward = CombinedReward(
        [RewardSource(source="correct"), RewardSource(source="format", weight=0.5)], torch.device("cpu")
    )
    total, terms = reward(["a", "b", "c"], ["Answer: 4", "it is 5", "Answer: 7"], ["4", "5", "6"])
    torch.testing.assert_close(terms["correct"], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(terms["format"], torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(total, torch.tensor([1.5, 1.0, 0.5]))


def raising_checker(prompt: object, completion: str, answer: str) -> float:
    if completion == "boom":
        raise RuntimeError("checker broke")
    return 1.0


def test_raising_checker_names_the_prompt_row():
    source = f"python:{__name__}:raising_checker"
    assert takes_answer(raising_checker)
    reward = CombinedReward([RewardSource(source=source)], torch.device("cpu"))
    assert reward.checkers == ["raising_checker"]
    with pytest.raises(ScoringError, match="raised RuntimeError: checker broke") as caught:
        reward(["p", "q"], ["fine", "boom"], ["1", "2"])
    assert caught.value.index == 1
    error = caught.value.at(["data.jsonl:7", "data.jsonl:9"])
    assert isinstance(error, UserError) and str(error).startswith("data.jsonl:9: reward")


def test_unknown_function_lists_the_checks():
    with pytest.raises(ConfigError, match="correct, format"):
        CombinedReward([RewardSource(source="corect")], torch.device("cpu"))


def test_contains_matches_whole_words():
    assert contains(None, "and Her sister", "her") == 1.0
    assert contains(None, "whereupon there", "her") == 0.0
    assert contains(None, "a+b", "a+b") == 1.0  # the answer is literal text, not a pattern


def test_whole_number():
    assert whole_number("-0") == 0
    assert whole_number("1,2") == 12  # commas are separators, never decimals
    assert whole_number("3.") == 3 and whole_number("3.5") is None


def test_grpo_with_a_checker_raises_accuracy(tmp_path: Path):
    """tiny-austen says "her" or "was" in about one 12-token reply in five: GRPO on the checker alone
    (8 replies per prompt, no critic, no reference) makes it say the prompt's word more often on held-out prompts."""
    prompts = [json.loads(line)["prompt"] for line in Path(assets.resolve("demo-prompts")).read_text().splitlines()]
    rows = [{"prompt": p, "answer": ("her", "was")[i % 2]} for i, p in enumerate(prompts[:320])]
    train, heldout = (
        write_jsonl(tmp_path / "train.jsonl", rows[64:]),
        write_jsonl(tmp_path / "heldout.jsonl", rows[:64]),
    )
    config = PPOConfig.model_validate(
        {
            "model": "tiny-austen", "prompts": train, "eval_prompts": heldout, "eval_size": 64,
            "rewards": [{"source": "contains"}], "output_dir": str(tmp_path / "out"), "log_every": 1,
            "batch_size": 32, "mini_batch_size": 16, "micro_batch_size": 16, "ppo_epochs": 2, "max_steps": 8,
            "learning_rate": 3e-4, "algo": "grpo", "group_size": 8, "kl_coef": 0.0, "sampling": {"max_new_tokens": 12},
            "num_threads": 2,
        }
    )  # fmt: skip
    logged = [json.loads(line) for line in (ppo(config) / "metrics.jsonl").read_text().splitlines()]
    start, end = logged[0]["eval/answer/accuracy"], logged[-1]["eval/answer/accuracy"]
    assert end > start + 0.15, (start, end)
    assert all(0 <= m["answer/format"] <= 1 for m in logged[1:])


CALLS = [0]


def fails_on_the_second_batch(prompt: object, completion: str, answer: str) -> float:
    """A checker that breaks after the first step's 8 replies."""
    CALLS[0] += 1
    if CALLS[0] > 8:
        raise RuntimeError("checker broke")
    return 1.0


def tiny_ppo_config(tmp_path: Path, model_dir: Path, prompts: str, source: str, **extra: object) -> PPOConfig:
    settings = {
        "model": str(model_dir), "prompts": prompts, "rewards": [{"source": source}],
        "output_dir": str(tmp_path / "out"), "batch_size": 8, "mini_batch_size": 8, "micro_batch_size": 8,
        "ppo_epochs": 1, "max_steps": 3,
        "sampling": {"max_new_tokens": 4}, "eval_every": 0, "num_threads": 1,
    }  # fmt: skip
    return PPOConfig.model_validate(settings | extra)


def test_ppo_refuses_prompts_without_answers_before_training(tmp_path: Path, tiny_model_dir: Path):
    rows = [{"prompt": "Emma was", "answer": "her"}] * 7 + [{"prompt": "She said"}]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{re.escape(prompts)}:8: field 'answer': missing"):
        ppo(tiny_ppo_config(tmp_path, tiny_model_dir, prompts, "contains"))
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_a_raising_checker_stops_the_run_naming_the_row(tmp_path: Path, tiny_model_dir: Path):
    rows = [{"prompt": f"Emma was {word}", "answer": "her"} for word in "abcdefghijklmnop"]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    config = tiny_ppo_config(tmp_path, tiny_model_dir, prompts, f"python:{__name__}:fails_on_the_second_batch")
    CALLS[0] = 0
    with pytest.raises(UserError, match=rf"^{re.escape(prompts)}:\d+: reward .* raised RuntimeError: checker broke"):
        ppo(config.model_copy(update={"save_every": 1}))
    out = tmp_path / "out"
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert list((out / "checkpoints").iterdir())  # step 1's checkpoint is kept, for --resume
