"""Training support for the recipes in ``recipes/``: arguments (YAML + CLI), model building, the optimiser and
schedule, resumable checkpoints and the shared Accelerate loop. The recipes read top to bottom; this package
holds what both of them use, so that it is written and tested once."""
