import json
from pathlib import Path

from rlhfkit.config import load_config
from rlhfkit.data.corpus import blocks, read_paragraphs, split_held_out
from rlhfkit.pretrain.corpus import train_tokenizer
from rlhfkit.pretrain.train import PretrainConfig, pretrain


def test_paragraphs_are_unwrapped_and_held_out_runs_are_contiguous(tmp_path: Path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("First line\nwrapped here.\n\n\nSecond   one.\n\nThird.\n")
    assert read_paragraphs(corpus) == ["First line wrapped here.", "Second one.", "Third."]
    train, held = split_held_out([str(i) for i in range(100)], every=2, run=10)
    assert held[:10] == [str(i) for i in range(10)] and train[:10] == [str(i) for i in range(10, 20)]


def test_tokenizer_has_distinct_pad_and_a_chat_template(austen_paragraphs: list[str]):
    tokenizer = train_tokenizer(austen_paragraphs[:50], vocab_size=400)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.decode(tokenizer("Emma Woodhouse, handsome")["input_ids"]) == "Emma Woodhouse, handsome"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|user|>\nHi\n<|assistant|>\n"
    assert len(tokenizer("<|assistant|>")["input_ids"]) == 1  # role markers are single special tokens


def test_blocks_cut_the_stream_without_overlap(austen_paragraphs: list[str]):
    tokenizer = train_tokenizer(austen_paragraphs[:50], vocab_size=400)
    cut = blocks(tokenizer, austen_paragraphs[:20], size=16)
    stream = tokenizer("\n\n".join(austen_paragraphs[:20]))["input_ids"]
    assert [t for b in cut for t in b.input_ids] == stream[: 16 * len(cut)]
    assert all(len(b.input_ids) == 16 and all(b.loss_mask) for b in cut)


def test_pretrain_from_scratch_lowers_held_out_loss(tmp_path: Path, austen_paragraphs: list[str]):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(austen_paragraphs[:300]))
    config = load_config(
        PretrainConfig,
        None,
        [
            f"corpus={corpus}",
            f"output_dir={tmp_path / 'out'}",
            "vocab_size=400",
            "block_size=32",
            "n_layer=1",
            "n_embd=32",
            "n_head=2",
            "max_steps=40",
            "batch_size=16",
            "warmup_steps=5",
            "learning_rate=3e-3",
            "held_out_every=10",
            "eval_every=0",
        ],
    )
    out = pretrain(config)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval/loss"] for m in evals if "eval/loss" in m]
    assert evals[-1] < evals[0] - 0.7  # from about ln(400) = 6.0 towards the unigram entropy
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 40 and summary["eval/ppl"] < 200
