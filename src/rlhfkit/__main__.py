"""`python -m rlhfkit` (what `accelerate launch -m rlhfkit` runs)."""

from rlhfkit.cli import main

main()
