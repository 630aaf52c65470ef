"""Compute: models, scoring, training, export. Plain functions with a config dataclass each,
runnable headless as `python -m pipelines.<name> --config run.json`. Never imports the studio
and never writes the store: inputs and outputs are files in the run folder."""
