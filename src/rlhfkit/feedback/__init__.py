"""The human-feedback stage: a labelling web app over a judgment store, and its command line."""
