"""Where judgements of replies come from; for now simulated labelers with a gold score and a noise model."""
