"""Training: a run's plan, model and pipelines, its callbacks, the run itself, its benchmark."""
