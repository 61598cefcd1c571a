import torch
from accelerate import Accelerator

from rlhfkit.training.reduction import GlobalMean


def test_global_mean_scales_a_local_sum_to_its_share_of_the_global_mean():
    # two processes, 8 tokens in the global batch: DDP averages the two gradients, hence × 2
    assert GlobalMean(world=2, count=8.0)(torch.tensor(4.0)).item() == 4.0 * 2 / 8
    one = GlobalMean.over(Accelerator(cpu=True), local_items=5)
    assert (one.world, one.count) == (1, 5.0)
    assert GlobalMean.over(Accelerator(cpu=True), local_items=0).count == 1.0  # no items: no division by 0
