"""A run's folder and its files: `RunFolder`, `load_model`, atomic writes, a model's outputs."""
