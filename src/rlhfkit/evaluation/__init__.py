"""Evaluation of policies: gold score and KL to a reference on fresh samples."""
