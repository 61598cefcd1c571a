"""`rlhfkit report` tells the whole run: tiny SFT, reward and DPO runs, and the page opened in Chromium shows
each stage's own held-out results and its losses per step, with every image inlined."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.evaluation.report import Run, loss_keys, stage_rows

CHROMIUM = Path("/usr/bin/chromium")
GOOD, BAD = " She was very happy.", " She was very sad."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def stage(name: str, *settings: str) -> None:
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([name, *(arg for s in [*settings, "num_threads=1", "log_every=1"] for arg in ("--set", s))])
    finally:
        torch.set_num_threads(threads)
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A quickstart-shaped directory (sft/, reward/, dpo/) from 2-step runs of each stage on tiny data."""
    root = tmp_path_factory.mktemp("quick")
    demos = write_jsonl(root / "sft.jsonl", [{"prompt": f"Day {i}.", "completion": GOOD} for i in range(16)])
    pairs = write_jsonl(
        root / "pairs.jsonl", [{"prompt": f"Day {i}.", "chosen": GOOD, "rejected": BAD} for i in range(16)]
    )
    common = [f"model={tiny_model_dir}", "max_steps=2", "batch_size=4", "micro_batch_size=4", "eval_fraction=0.25"]
    stage("sft", *common, f"data={demos}", f"output_dir={root / 'sft'}")
    stage("reward", *common, f"heads.reward.data={pairs}", f"output_dir={root / 'reward'}")
    stage("dpo", *common, f"data={pairs}", f"output_dir={root / 'dpo'}", f"ref_cache_dir={root / 'cache'}")
    return root


def test_each_stage_reports_its_own_held_out_results(quick_run: Path):
    rows = {name: stage_rows(Run(name, quick_run / name, read(quick_run / name))) for name in ("sft", "reward", "dpo")}
    measured = {name: [row[2] for row in table] for name, table in rows.items()}
    assert measured == {
        "sft": ["held-out loss", "held-out perplexity"],
        "reward": ["held-out accuracy (reward)", "held-out margin (reward)", "calibration error (ECE) (reward)"],
        "dpo": ["implicit-reward accuracy", "implicit-reward margin", "held-out loss"],
    }
    assert rows["sft"][0][3].endswith("(step 0)") and rows["sft"][0][4].endswith("(step 2)")  # before and after
    assert loss_keys(Run("dpo", quick_run / "dpo", read(quick_run / "dpo"))) == ["eval/dpo/loss", "dpo/loss"]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
def test_the_report_opened_in_chromium_shows_every_stage_and_its_loss_plot(quick_run: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs `pip install playwright`")
    page_file = quick_run / "report.html"
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(quick_run), "--set", f"output={page_file}"])
    assert exit_info.value.code == 0
    html = page_file.read_text()
    assert 'src="http' not in html and "<script" not in html  # self-contained
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(page_file.as_uri())
        cells = page.locator("#stages td").all_inner_texts()
        for name in ("sft", "reward", "dpo"):
            assert any(cell.endswith(f"/{name}") for cell in cells)
        for measure in ("held-out loss", "held-out accuracy (reward)", "calibration error (ECE) (reward)"):
            assert measure in cells
        assert "implicit-reward accuracy" in cells and "implicit-reward margin" in cells
        ends = [cells[i + 2] for i, cell in enumerate(cells) if cell in ("held-out loss", "implicit-reward margin")]
        assert len(ends) == 3 and all(end.endswith("(step 2)") and math.isfinite(float(end.split()[0])) for end in ends)
        figures = page.locator("#losses img")
        assert figures.count() == 3
        widths = figures.evaluate_all(
            "images => images.map(i => i.complete && i.src.startsWith('data:image/png') ? i.naturalWidth : 0)"
        )
        assert all(width > 100 for width in widths)  # decoded: real inlined PNGs
        browser.close()
    finally:
        playwright.stop()
