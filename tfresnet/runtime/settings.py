"""Where and how a run computes, as the user sets it: `RuntimeSettings`."""

import dataclasses

from tfresnet.errors import UserError
from tfresnet.runtime.cluster import STRATEGIES
from tfresnet.runtime.precision import JIT_MODES, PRECISIONS
from tfresnet.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class RuntimeSettings(Settings):
    """Where and how a run computes, resolved by `tfresnet.runtime.session.configure`."""

    seed: int = setting(0, "seed of initialisation, split, shuffling and augmentation",
                        "training")
    deterministic: bool = setting(False, "make TensorFlow ops deterministic (slower)",
                                  "training")
    precision: str = setting("auto", "auto: mixed_bfloat16 on A100/H100-class GPUs, "
                             "mixed_float16 on V100/T4, else float32", "training",
                             list(PRECISIONS))
    jit: str = setting("auto", "XLA compilation (auto: on with one GPU, off with several "
                       "replicas)", "training", list(JIT_MODES))
    strategy: str = setting("auto", "tf.distribute strategy (auto: several workers under "
                            "TF_CONFIG or Slurm, else every GPU)", "training",
                            list(STRATEGIES))
    sync_bn: bool = setting(False, "synchronise batch-norm statistics across replicas",
                            "training")

    def validate(self):
        """Raises a one-line `UserError` for settings no run can use; returns self."""
        self.check_choices()
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0. Received: {self.seed}")
        return self
