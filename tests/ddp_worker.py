"""What torchrun runs in each process of the DDP tests: `rlhfkit` (as `python -m rlhfkit` does), then, after a
successful run, how accelerate connected this process, written to $RLHFKIT_TEST_RANKS/rank-<index>.json."""

import json
import os
from pathlib import Path

from accelerate.state import AcceleratorState

from rlhfkit.cli import main

try:
    main()
except SystemExit as done:  # typer exits, 0 on success
    if not done.code:
        state = AcceleratorState()  # the state rlhfkit's Accelerator set up
        record = {"index": state.process_index, "processes": state.num_processes, "type": state.distributed_type.value}
        Path(os.environ["RLHFKIT_TEST_RANKS"], f"rank-{state.process_index}.json").write_text(json.dumps(record))
    raise
