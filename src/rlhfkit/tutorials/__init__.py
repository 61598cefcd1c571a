"""Small runnable handouts: each module trains something tiny with the project's own pure functions."""
