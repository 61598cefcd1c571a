"""`python -m rlhfkit` (what `torchrun -m rlhfkit` runs in each process)."""

from rlhfkit.cli import main

main()
