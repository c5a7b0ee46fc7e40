"""Training: assembly of a run from its config, the runtime (devices, strategy, precision),
optimizers, callbacks, checkpoints, the run itself and its benchmark."""
