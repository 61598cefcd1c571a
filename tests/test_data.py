"""The data layer: every reader, every record kind, the error locations users see, and the pair converters."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet
import pytest
from datasets import Dataset, DatasetDict

from rlhfkit.data import (
    INSTRUCTGPT_FLAGS,
    RECORD_TYPES,
    DataError,
    EditRecord,
    Message,
    PreferenceRecord,
    RankingRecord,
    RatingRecord,
    SFTRecord,
    UnpairedRecord,
    edit_to_pair,
    load_records,
    ranking_to_pairs,
    ratings_to_pairs,
    read_rows,
    to_preferences,
    validate_record,
)
from rlhfkit.data.records import load_feedback
from rlhfkit.dpo.data import KINDS as DPO_KINDS

Rows = list[dict[str, Any]]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# Two rows per kind, with an extra column ("source") that records must ignore, and nulls where
# columnar formats would put them.
EXAMPLES: dict[str, Rows] = {
    "sft": [
        {"prompt": "2+2?", "completion": "4", "source": "a"},
        {"prompt": "Capital of France?", "completion": "Paris", "source": "b"},
    ],
    "preference": [
        {"prompt": "q1", "chosen": "good", "rejected": "bad", "margin": 1.5, "source": "a"},
        {"prompt": "q2", "chosen": "yes", "rejected": "no", "margin": None, "source": "b"},
    ],
    "ranking": [
        {"prompt": "q1", "responses": ["a", "b", "c"], "ranks": [1, 3, 2], "source": "a"},
        {"prompt": "q2", "responses": ["d", "e"], "ranks": [1, 1], "source": "b"},
    ],
    "rating": [
        {"prompt": "q1", "response": "a", "score": 6, "flags": ["hallucination"], "source": "a"},
        {"prompt": "q1", "response": "b", "score": 2, "flags": [], "source": "b"},
    ],
    "unpaired": [
        {"prompt": "q1", "completion": "a", "label": True, "source": "a"},
        {"prompt": "q2", "completion": "b", "label": False, "source": "b"},
    ],
    "edit": [
        {"prompt": "q1", "original": "teh cat", "edited": "the cat", "source": "a"},
        {"prompt": "q2", "original": "its", "edited": "it's", "source": "b"},
    ],
    "candidates": [
        {"prompt": "q1", "responses": ["a", "b", "c", "d"], "source": "a"},
        {"prompt": "q2", "responses": ["e", "f"], "source": "b"},
    ],
}


def write_jsonl(path: Path, rows: Rows) -> Path:
    path = path.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_json(path: Path, rows: Rows) -> Path:
    path = path.with_suffix(".json")
    path.write_text(json.dumps(rows))
    return path


def write_parquet(path: Path, rows: Rows) -> Path:
    path = path.with_suffix(".parquet")
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def write_saved(path: Path, rows: Rows) -> Path:
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


WRITERS: dict[str, Callable[[Path, Rows], Path]] = {
    "jsonl": write_jsonl,
    "json": write_json,
    "parquet": write_parquet,
    "save_to_disk": write_saved,
}


def expected_records(kind: str) -> list[Any]:
    return [RECORD_TYPES[kind].model_validate(row) for row in EXAMPLES[kind]]


def error_of(call: Callable[[], object]) -> str:
    with pytest.raises(DataError) as info:
        call()
    return str(info.value)


# Readers


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("kind", EXAMPLES)
def test_every_kind_loads_from_every_format(tmp_path: Path, fmt: str, kind: str) -> None:
    path = WRITERS[fmt](tmp_path / "data", EXAMPLES[kind])
    records = load_records(path, kind)
    assert records == expected_records(kind)
    assert all(type(record) is RECORD_TYPES[kind] for record in records)
    assert "source" not in records[0].model_dump()


@pytest.mark.parametrize(
    ("fmt", "first", "second"),
    [
        ("jsonl", "data.jsonl:1", "data.jsonl:2"),
        ("json", "data.json[row 0]", "data.json[row 1]"),
        ("parquet", "data.parquet[row 0]", "data.parquet[row 1]"),
        ("save_to_disk", "data[row 0]", "data[row 1]"),
    ],
)
def test_locations_name_the_file_and_row(tmp_path: Path, fmt: str, first: str, second: str) -> None:
    path = WRITERS[fmt](tmp_path / "data", EXAMPLES["edit"])
    rows = list(read_rows(path))
    assert [row.location for row in rows] == [str(tmp_path / first), str(tmp_path / second)]
    assert rows[0].data["edited"] == "the cat"


def test_jsonl_counts_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert [(row.location, row.data) for row in read_rows(path)] == [
        (f"{path}:1", {"a": 1}),
        (f"{path}:4", {"a": 2}),
    ]


def test_malformed_jsonl_line_is_reported_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "file.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": "unterminated\n{"prompt": "never read"}\n')
    message = error_of(lambda: list(read_rows(path)))
    assert message.startswith(f"{path}:3: invalid JSON: ")
    assert "file.jsonl:3" in message


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_bytes_that_are_not_utf8_are_placed_by_line_and_byte(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"latin1{suffix}"
    body = '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "caf\u00e9"}\n'.encode("latin-1")
    path.write_bytes(b"[" + body.replace(b"}\n{", b"},\n{") + b"]" if suffix == ".json" else body)
    offset = path.read_bytes().index(b"\xe9")
    message = error_of(lambda: list(read_rows(path)))
    assert message.startswith(f"{path}:3: not UTF-8 text (byte {offset} of the file is 0xe9)")


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"a": "\u00e9"}\n{"a": 2}\n'.encode())
    assert [row.data for row in read_rows(path)] == [{"a": "\u00e9"}, {"a": 2}]


def test_jsonl_line_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "file.jsonl"
    path.write_text('["a", "list"]\n')
    assert error_of(lambda: list(read_rows(path))) == f"{path}:1: expected a JSON object, got an array"


def test_json_accepts_a_wrapper_object_with_one_list(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": "1.0", "data": EXAMPLES["edit"]}))
    assert load_records(path, "edit") == expected_records("edit")


def test_json_without_a_list_of_rows_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"train": [], "test": []}))
    assert "exactly one list-valued key" in error_of(lambda: read_rows(path))
    path.write_text('"just a string"')
    assert error_of(lambda: read_rows(path)).endswith("got a string")


def test_json_rows_must_be_objects(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text('[{"a": 1}, 7]')
    assert error_of(lambda: list(read_rows(path))) == f"{path}[row 1]: expected a JSON object, got a number"


def test_dataset_dict_reads_train_or_the_named_split(tmp_path: Path) -> None:
    path = tmp_path / "dd"
    DatasetDict(
        train=Dataset.from_list(EXAMPLES["edit"][:1]), test=Dataset.from_list(EXAMPLES["edit"][1:])
    ).save_to_disk(str(path))
    assert [row.location for row in read_rows(path)] == [f"{path}::train[row 0]"]
    assert load_records(f"{path}::test", "edit") == expected_records("edit")[1:]
    assert error_of(lambda: read_rows(f"{path}::dev")) == (
        f"{path}: no split 'dev'; it has train, test (pick one with {path}::SPLIT)"
    )


def test_split_syntax_needs_a_dataset_dict(tmp_path: Path) -> None:
    saved = write_saved(tmp_path / "ds", EXAMPLES["edit"])
    assert "without splits" in error_of(lambda: read_rows(f"{saved}::train"))
    jsonl = write_jsonl(tmp_path / "data", EXAMPLES["edit"])
    assert "is a file" in error_of(lambda: read_rows(f"{jsonl}::train"))


def test_directory_that_is_not_a_saved_dataset(tmp_path: Path) -> None:
    assert "save_to_disk" in error_of(lambda: read_rows(tmp_path))


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    assert error_of(lambda: read_rows(path)) == f"{path}: no such file or directory"


def test_unknown_extension_lists_the_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    message = error_of(lambda: read_rows(path))
    assert message.startswith(f"{path}: unsupported format '.csv'; supported: ")
    assert all(fmt in message for fmt in (".jsonl", ".json", ".parquet", "save_to_disk"))


def test_corrupt_parquet_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet")
    assert error_of(lambda: read_rows(path)).startswith(f"{path}: not a readable Parquet file")


# Records


def test_empty_file_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    assert error_of(lambda: load_records(path, "sft")) == f"{path}: no rows"


def test_unknown_kind_lists_the_kinds(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data", EXAMPLES["sft"])
    assert error_of(lambda: load_records(path, "dpo")) == (
        "unknown record kind 'dpo'; expected one of: "
        "prompt, sft, preference, ranking, rating, unpaired, edit, candidates, scored, rewarded, stepwise"
    )


def test_missing_field_is_reported_with_line_and_field(tmp_path: Path) -> None:
    rows = [EXAMPLES["preference"][0], {"prompt": "q", "chosen": "a"}]
    path = write_jsonl(tmp_path / "prefs", rows)
    assert error_of(lambda: load_records(path, "preference")) == (f"{path}:2: field 'rejected': Field required")


def test_rating_out_of_scale_names_row_field_and_value(tmp_path: Path) -> None:
    rows = [EXAMPLES["rating"][0], {"prompt": "q", "response": "r", "score": 8}]
    path = write_json(tmp_path / "ratings", rows)
    assert error_of(lambda: load_records(path, "rating")) == (
        f"{path}[row 1]: field 'score': Input should be less than or equal to 7 (got 8)"
    )


def test_rating_flags_are_instructgpt_flags() -> None:
    record = validate_record(
        {"prompt": "q", "response": "r", "score": 1, "flags": list(INSTRUCTGPT_FLAGS)}, "rating", "here"
    )
    assert isinstance(record, RatingRecord) and len(record.flags) == 10
    message = error_of(
        lambda: validate_record({"prompt": "q", "response": "r", "score": 1, "flags": ["rude"]}, "rating", "here")
    )
    assert message.startswith("here: field 'flags[0]': Input should be 'fails_to_follow_instruction'")
    assert message.endswith("(got 'rude')")


def test_every_problem_gets_a_line_and_long_values_are_cut() -> None:
    message = error_of(
        lambda: validate_record({"prompt": "q", "response": 5, "score": "x" * 200}, "rating", "f.jsonl:9")
    )
    lines = message.splitlines()
    assert lines[0] == "f.jsonl:9: field 'response': Input should be a string or a list of chat messages (got 5)"
    assert lines[1].startswith("f.jsonl:9: field 'score': Input should be a valid integer")
    assert lines[1].endswith("xxx...)") and len(lines[1]) < 200


def test_ranks_must_match_the_responses() -> None:
    row = {"prompt": "q", "responses": ["a", "b", "c"], "ranks": [1, 2]}
    assert error_of(lambda: validate_record(row, "ranking", "r.jsonl:4")) == (
        "r.jsonl:4: field 'ranks': 2 ranks for 3 responses; give one rank per response (got [1, 2])"
    )
    row = {"prompt": "q", "responses": ["a", "b"], "ranks": [0, 1]}
    assert error_of(lambda: validate_record(row, "ranking", "r.jsonl:5")).startswith(
        "r.jsonl:5: field 'ranks[0]': Input should be greater than or equal to 1"
    )


def test_ranking_needs_two_responses() -> None:
    row = {"prompt": "q", "responses": ["only"], "ranks": [1]}
    assert error_of(lambda: validate_record(row, "ranking", "r.json[row 0]")).startswith(
        "r.json[row 0]: field 'responses': List should have at least 2 items"
    )


def test_message_errors_point_into_the_conversation() -> None:
    row = {
        "prompt": [user("q")],
        "responses": [[assistant("a")], [{"role": "bot", "content": "b"}]],
        "ranks": [1, 2],
    }
    assert error_of(lambda: validate_record(row, "ranking", "x")).startswith(
        "x: field 'responses[1][0].role': Input should be 'system', 'user', 'assistant' or 'tool'"
    )


def test_sft_accepts_prompt_completion_or_messages() -> None:
    chat = validate_record({"prompt": [user("hi")], "completion": [assistant("hello")]}, "sft", "x")
    assert isinstance(chat, SFTRecord) and chat.completion == [Message(role="assistant", content="hello")]
    convo = validate_record({"messages": [user("hi"), {**assistant("hello"), "name": "bot"}]}, "sft", "x")
    assert isinstance(convo, SFTRecord) and convo.prompt is None and len(convo.messages or []) == 2


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (
            {"prompt": "a", "completion": "b", "messages": [assistant("c")]},
            "x: expected either 'prompt' and 'completion', or 'messages'; got 'prompt', 'completion', 'mess",
        ),
        ({"prompt": "a"}, "x: expected either 'prompt' and 'completion', or 'messages'; got 'prompt'"),
        ({}, "x: expected either 'prompt' and 'completion', or 'messages'; got none of them"),
        (
            {"messages": [user("hi")]},
            "x: field 'messages': needs at least one assistant message to learn from",
        ),
        (
            {"prompt": "a", "completion": [assistant("b")]},
            "x: prompt, completion mix plain text and chat messages; use one or the other",
        ),
    ],
)
def test_sft_shape_errors(row: dict[str, Any], problem: str) -> None:
    assert error_of(lambda: validate_record(row, "sft", "x")).startswith(problem)


def test_unpaired_label_accepts_one_and_zero() -> None:
    labels = [
        validate_record({"prompt": "q", "completion": "c", "label": value}, "unpaired", "x").label
        for value in (1, 0, True, False)
    ]
    assert labels == [True, False, True, False]
    assert "field 'label'" in error_of(
        lambda: validate_record({"prompt": "q", "completion": "c", "label": 2}, "unpaired", "x")
    )


def test_implicit_prompt_is_the_shared_prefix() -> None:
    row = {
        "chosen": [{"role": "system", "content": "be kind"}, user("hi"), assistant("hello!")],
        "rejected": [{"role": "system", "content": "be kind"}, user("hi"), assistant("go away"), user("?")],
    }
    record = validate_record(row, "preference", "x")
    assert record == PreferenceRecord(
        prompt=[Message(role="system", content="be kind"), Message(role="user", content="hi")],
        chosen=[Message(role="assistant", content="hello!")],
        rejected=[Message(role="assistant", content="go away"), Message(role="user", content="?")],
    )


@pytest.mark.parametrize(
    ("chosen", "rejected"),
    [([user("a"), assistant("b")], [user("z"), assistant("b")]), ([user("a")], [user("a"), assistant("b")])],
)
def test_implicit_prompt_needs_a_prefix_and_a_difference(chosen: list[Any], rejected: list[Any]) -> None:
    message = error_of(lambda: validate_record({"chosen": chosen, "rejected": rejected}, "preference", "x"))
    assert message.startswith("x: without 'prompt', 'chosen' and 'rejected' must start with the same messages")


@pytest.mark.parametrize(
    ("chosen", "rejected", "prompt", "replies"),
    [
        ("Q: sky? A: blue", "Q: sky? A: black", "Q: sky? A:", (" blue", " black")),  # split inside "bl"
        ("Once upon a time there was", "Once upon a time", "Once upon a", (" time there was", " time")),
        ("Hi.\nYes, ma'am", "Hi.\nNo", "Hi.", ("\nYes, ma'am", "\nNo")),
    ],
)
def test_implicit_text_prompt_ends_at_the_last_whitespace_of_the_shared_prefix(
    chosen: str, rejected: str, prompt: str, replies: tuple[str, str]
) -> None:
    record = validate_record({"chosen": chosen, "rejected": rejected}, "preference", "x")
    assert (record.prompt, record.chosen, record.rejected) == (prompt, *replies)


@pytest.mark.parametrize(("chosen", "rejected", "shared"), [("a", "b", "no text"), ("same text", "same text", "all")])
def test_implicit_text_prompt_needs_a_whitespace_ended_prefix_and_a_difference(chosen, rejected, shared) -> None:
    message = error_of(lambda: validate_record({"chosen": chosen, "rejected": rejected}, "preference", "x"))
    assert message.startswith("x: without 'prompt', 'chosen' and 'rejected' must start with the same text")
    assert f"they share {shared}" in message


HH_CHOSEN = "\n\nHuman: Hello?\n\nAssistant: Good day.\n\nHuman: Any news?\n\nAssistant: A ball at Netherfield."
HH_REJECTED = "\n\nHuman: Hello?\n\nAssistant: Good day.\n\nHuman: Any news?\n\nAssistant: None at all."


def test_hh_rlhf_transcripts_become_chat_the_shared_conversation_is_the_prompt() -> None:
    record = validate_record({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "preference", "x")
    assert record == PreferenceRecord(
        prompt=[user("Hello?"), assistant("Good day."), user("Any news?")],
        chosen=[assistant("A ball at Netherfield.")],
        rejected=[assistant("None at all.")],
    )
    stripped = validate_record({"chosen": HH_CHOSEN[2:], "rejected": HH_REJECTED[2:]}, "preference", "x")
    assert stripped == record  # copies that lost the leading blank line read the same


@pytest.mark.parametrize(
    ("rejected", "reason"),
    [
        (
            "\n\nHuman: Hello?",
            "field 'rejected': not an HH-RLHF transcript: a transcript ends with an 'Assistant:' turn",
        ),
        ("Hello?\n\nAssistant: Hi", "field 'rejected': not an HH-RLHF transcript: a transcript starts with a 'Human:'"),
        (
            "\n\nHuman: Goodbye?\n\nAssistant: Good day.\n\nHuman: Any news?\n\nAssistant: None.",
            "fields 'chosen' and 'rejected': the two transcripts differ before their final Assistant turn",
        ),
    ],
)
def test_malformed_transcript_names_the_row_field_and_reason(tmp_path: Path, rejected: str, reason: str) -> None:
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [{"chosen": HH_CHOSEN, "rejected": HH_CHOSEN}, {"chosen": HH_CHOSEN, "rejected": rejected}],
    )
    assert error_of(lambda: load_feedback(path, None, DPO_KINDS)).startswith(f"{path}:2: {reason}")


@pytest.mark.parametrize(
    ("row", "kind"),
    [
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
        ({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "preference"),
        ({"prompt": "q", "completion": "a", "label": True}, "unpaired"),
        ({"prompt": "q", "responses": ["a", "b"], "ranks": [2, 1]}, "ranking"),
        ({"prompt": "q", "response": "a", "score": 3}, "rating"),
        ({"prompt": "q", "original": "a", "edited": "b"}, "edit"),
        (
            {
                "instruction": "q",
                "completions": [{"response": "a", "overall_score": 2}, {"response": "b", "overall_score": 5}],
            },
            "scored",
        ),
        ({"prompt": "q", "completions": ["step 1", "step 2"], "labels": [True, False]}, "stepwise"),
    ],
)
def test_kind_is_inferred_from_the_fields(tmp_path: Path, row: dict[str, Any], kind: str) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{**row, "source": "extra columns are ignored"}])
    assert load_feedback(path, None, DPO_KINDS)[0] == kind


def test_kind_that_cannot_be_inferred_or_used_is_an_error_naming_the_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "q", "text": "a"}])
    assert error_of(lambda: load_feedback(path, None, DPO_KINDS)).startswith(
        f"{path}:1: a row with 'prompt', 'text' fits none of the shapes read here (preference: chosen+rejected;"
    )
    assert error_of(lambda: load_feedback(path, "sft", DPO_KINDS)).startswith(
        f"{path}: sft records cannot be used here"
    )


def test_scored_records_rank_by_score_and_give_all_pairs() -> None:
    row = {"prompt": "q", "completions": [{"response": r, "score": s} for r, s in (("a", 7.5), ("b", 9), ("c", 7.5))]}
    record = validate_record(row, "scored", "x")
    assert record.ranking() == RankingRecord(prompt="q", responses=["a", "b", "c"], ranks=[2, 1, 2])
    assert [(p.chosen, p.rejected) for p in to_preferences([record], "scored")] == [("b", "a"), ("b", "c")]
    assert "x: field 'completions[1].score': Field required" in error_of(
        lambda: validate_record(
            {"prompt": "q", "completions": [{"response": "a", "score": 1}, {"response": "b"}]}, "scored", "x"
        )
    )


def test_stepwise_records_are_judged_by_their_outcome_and_unpaired_ones_pair_by_prompt() -> None:
    good = validate_record({"prompt": "q", "completions": ["x = 1", "so 2"], "labels": [True, True]}, "stepwise", "x")
    bad = validate_record({"prompt": "q", "completions": ["x = 2", "so 3"], "labels": [True, False]}, "stepwise", "x")
    assert good.outcome() == UnpairedRecord(prompt="q", completion="\nx = 1\nso 2", label=True)
    assert bad.outcome().label is False
    assert [(p.chosen, p.rejected) for p in to_preferences([bad, good], "stepwise")] == [
        ("\nx = 1\nso 2", "\nx = 2\nso 3")
    ]
    assert "x: field 'labels': 1 labels for 2 steps" in error_of(
        lambda: validate_record({"prompt": "q", "completions": ["a", "b"], "labels": [True]}, "stepwise", "x")
    )


def test_null_columns_count_as_absent(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a", "completion": "b", "messages": None},
        {"prompt": None, "completion": None, "messages": [user("hi"), assistant("yo")]},
    ]
    records = load_records(write_parquet(tmp_path / "mixed", rows), "sft")
    assert [record.messages is None for record in records] == [True, False]


# Conversion


def test_ranking_to_pairs_with_a_tie() -> None:
    ranking = RankingRecord(prompt="q", responses=["a", "b", "c", "d"], ranks=[1, 2, 2, 3])
    strict = [(p.chosen, p.rejected, p.tie) for p in ranking_to_pairs(ranking)]
    assert strict == [
        ("a", "b", False),
        ("a", "c", False),
        ("a", "d", False),
        ("b", "d", False),
        ("c", "d", False),
    ]
    with_ties = [(p.chosen, p.rejected, p.tie) for p in ranking_to_pairs(ranking, include_ties=True)]
    assert with_ties == [
        ("a", "b", False),
        ("a", "c", False),
        ("a", "d", False),
        ("b", "c", True),
        ("b", "d", False),
        ("c", "d", False),
    ]
    assert all(p.prompt == "q" and p.margin is None for p in ranking_to_pairs(ranking))


def test_ranking_to_pairs_puts_the_better_rank_first_whatever_the_order() -> None:
    ranking = RankingRecord(prompt="q", responses=["worst", "best"], ranks=[2, 1])
    assert [(p.chosen, p.rejected) for p in ranking_to_pairs(ranking)] == [("best", "worst")]


def test_ratings_to_pairs_groups_by_prompt() -> None:
    chat = [Message(role="user", content="q2")]
    ratings = [
        RatingRecord(prompt="q1", response="a", score=7),
        RatingRecord(prompt=chat, response=[Message(role="assistant", content="x")], score=3),
        RatingRecord(prompt="q1", response="b", score=2),
        RatingRecord(
            prompt=[Message(role="user", content="q2")],
            response=[Message(role="assistant", content="y")],
            score=5,
        ),
        RatingRecord(prompt="q1", response="c", score=7),
    ]
    pairs = ratings_to_pairs(ratings, margin_from_score=True)
    summary = [(p.prompt, p.chosen, p.rejected, p.margin) for p in pairs]
    assert summary == [
        ("q1", "a", "b", 5.0),
        ("q1", "c", "b", 5.0),
        (chat, [Message(role="assistant", content="y")], [Message(role="assistant", content="x")], 2.0),
    ]
    ties = [p for p in ratings_to_pairs(ratings, include_ties=True) if p.tie]
    assert [(p.chosen, p.rejected, p.margin) for p in ties] == [("a", "c", None)]


def test_edit_to_pair_prefers_the_edit() -> None:
    pair = edit_to_pair(EditRecord(prompt="q", original="teh", edited="the"))
    assert (pair.prompt, pair.chosen, pair.rejected, pair.tie) == ("q", "the", "teh", False)
    with pytest.raises(ValueError, match="edit leaves the reply unchanged"):
        edit_to_pair(EditRecord(prompt="q", original="same", edited="same"))


def test_to_preferences_dispatches_on_kind(tmp_path: Path) -> None:
    for kind, count in {"preference": 2, "ranking": 3, "rating": 1, "edit": 2}.items():
        pairs = to_preferences(load_records(write_jsonl(tmp_path / kind, EXAMPLES[kind]), kind), kind)
        assert len(pairs) == count and all(isinstance(p, PreferenceRecord) for p in pairs)
    with pytest.raises(ValueError, match="convertible kinds: preference, ranking, rating, edit"):
        to_preferences([], "sft")
