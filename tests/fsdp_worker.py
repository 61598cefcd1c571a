"""What `accelerate launch --config_file configs/accelerate/fsdp.yaml` runs in each process of the FSDP tests:
ddp_worker.py, with accelerate made to select FSDP on the CPU.

accelerate 1.16 selects FSDP only for accelerator devices (see `runtime.check_sharding`), while torch's FSDP2
(`fully_shard`) itself runs on CPU over gloo; so each process switches the state accelerate set up to FSDP, with
the plugin read from the launch config's FSDP_* variables (FSDP2 here), before rlhfkit prepares anything.
"""

import runpy
from pathlib import Path

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from rlhfkit.training import runtime


class CpuFsdpAccelerator(Accelerator):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        # both shared states: AcceleratorState copies PartialState's type back each time it is built again
        self.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP


runtime.Accelerator = CpuFsdpAccelerator
runpy.run_path(str(Path(__file__).with_name("ddp_worker.py")), run_name="__main__")
