"""The keras-tuner search: trials are `tfresnet.train` runs of one base `TrainConfig`."""

import json
import statistics
import time

import keras
import keras_tuner as kt

from tfresnet.data.augment import PRESETS
from tfresnet.data.splits import stratified_split
from tfresnet.optim.optimizers import OPTIMIZERS
from tfresnet.runs.files import atomic_write_text, make_dir
from tfresnet.runtime.session import set_session_state
from tfresnet.training.build import build_model
from tfresnet.training.callbacks import training_callbacks
from tfresnet.training.pipelines import make_pipelines
from tfresnet.training.plan import build_settings, make_plan
from tfresnet.tuning.memory import release_memory, resident_memory_mb

# The searchable hyper-parameters besides the learning rate: name (a `TrainConfig` key) ->
# its keras-tuner declaration. Adding one is one line here.
SEARCH_SPACE = {
    "optimizer": lambda hp: hp.Choice("optimizer", list(OPTIMIZERS)),
    "l2": lambda hp: hp.Float("l2", 1e-5, 1e-2, sampling="log"),
    "weight_decay": lambda hp: hp.Float("weight_decay", 1e-5, 1e-2, sampling="log"),
    "label_smoothing": lambda hp: hp.Float("label_smoothing", 0.0, 0.2, step=0.05),
    "batch_size": lambda hp: hp.Choice("batch_size", [64, 128, 256]),
    "augment": lambda hp: hp.Choice("augment", list(PRESETS)),
}


TUNERS = ("random", "bayesian", "hyperband")


class TrialRecorder(keras.callbacks.Callback):
    """What a trial adds to its stats: the model's dtype policy, its per-epoch logs and
    its compile seconds.

    Compile seconds: the wall time of the trial's first training execution (one call of
    Keras' train function, from ``on_train_batch_begin`` to ``on_train_batch_end``, by when
    Keras has fetched its outputs: tracing, graph passes, XLA compilation where on, the
    input pipeline's start and its steps) minus the median of the same epoch's later
    executions; the whole first execution where an epoch is one. Validation's own first
    call is not counted.
    """

    def __init__(self):
        super().__init__()
        self.history = []
        self.execution_seconds = []  # of the first epoch trained

    def on_train_batch_begin(self, batch, logs=None):
        self.began = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if not self.history:
            self.execution_seconds.append(time.perf_counter() - self.began)

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({"epoch": epoch + 1, **(logs or {})})

    def stats(self):
        first, *later = self.execution_seconds
        return {"dtype_policy": self.model.dtype_policy.name,
                "compile_seconds": round(first - (statistics.median(later) if later else 0), 3),
                "history": self.history}


class ResNetHyperModel(kt.HyperModel):
    """Trials are `tfresnet.train` runs of ``base`` with the searched values substituted:
    the same precision, seed, model, loss, optimizer and pipeline, no second code path.

    Args:
        base: the `TrainConfig` every trial starts from.
        data: the (possibly subset) `Dataset`, with a validation split.
        runtime: the resolved `tfresnet.runtime.session.Runtime`.
        search: names from `SEARCH_SPACE` to search besides the learning rate.
        lr_range: ``(low, high)`` of the log-uniform learning rate.
        size: the network's input side (`Plan.input_size`), the base run's.
    """

    def __init__(self, base, data, runtime, search, lr_range, size):
        super().__init__()
        self.base = base
        self.data = data
        # The arrays become tensors once for the whole search: converting them again in
        # every trial's pipeline made the process grow by their size per trial.
        self.tensors = data.splits_once()
        self.runtime = runtime
        self.search = set(search)
        self.lr_range = lr_range
        self.size = size
        self.plan = None  # the trial's, made by `build` and followed by `fit`
        self.recorder = None  # the trial's `TrialRecorder`, made by `fit`

    def take_trial_stats(self):
        """The stats of the trial that just ended (`TrialRecorder.stats`; empty when it
        never trained), letting go of its recorder and with it its model."""
        recorder, self.recorder = self.recorder, None
        return recorder.stats() if recorder and recorder.execution_seconds else {}

    def trial_config(self, hp):
        """The `TrainConfig` of one trial; also declares the search space."""
        values = {"lr": hp.Float("lr", *self.lr_range, sampling="log")}
        for name in SEARCH_SPACE:  # a fixed order keeps keras-tuner's space stable
            if name in self.search:
                values[name] = SEARCH_SPACE[name](hp)
        if "tuner/epochs" in hp.values:  # Hyperband's budget for this trial
            values["epochs"] = int(hp.values["tuner/epochs"])
        return self.base.updated(values, "search space")

    def build(self, hp):
        config = self.trial_config(hp)
        # keras-tuner clears Keras' session before each trial's build, and with it the
        # seeds and the dtype policy `configure` set: a trial builds as `train` would.
        set_session_state(self.runtime.seed, self.runtime.precision)
        self.plan = make_plan(config, self.data, self.runtime, self.size)
        return build_model(self.data, self.runtime, self.plan, **build_settings(config))

    def fit(self, hp, model, *args, **kwargs):
        config = self.trial_config(hp)
        train_data, val_data = make_pipelines(config.augment, self.data, self.runtime,
                                              self.plan, arrays=self.tensors)
        self.recorder = TrialRecorder()  # first: the others' end-of-batch work is not timed
        callbacks = [self.recorder, *training_callbacks(config.transfer_settings, config.ema),
                     *kwargs.get("callbacks", [])]
        return model.fit(train_data, steps_per_epoch=self.plan.steps_per_epoch,
                         epochs=kwargs.pop("epochs", config.epochs),
                         initial_epoch=kwargs.pop("initial_epoch", 0),
                         validation_data=val_data, callbacks=callbacks, shuffle=False,
                         verbose=0)


def make_tuner(kind, hypermodel, out_dir, runtime, max_trials, epochs_per_trial, seed,
               overwrite):
    """The keras-tuner tuner (``kind``: one of `TUNERS`) of ``max_trials`` trials in
    ``out_dir``, recording each trial's seconds, what its `TrialRecorder` saw and the
    process's resident memory after it into ``trial_stats/<trial>.json``.
    ``epochs_per_trial`` is Hyperband's largest budget; ``overwrite`` starts the search
    over."""
    base = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization,
            "hyperband": kt.Hyperband}[kind]

    class TimedTuner(base):
        # Stats are recorded after the oracle has saved the trial as finished, one file
        # per trial (parallel workers never write the same file).
        def on_trial_begin(self, trial):
            self._trial_start = time.perf_counter()
            super().on_trial_begin(trial)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            stats = {"seconds": round(time.perf_counter() - self._trial_start, 2),
                     **self.hypermodel.take_trial_stats()}
            release_memory()
            stats.update(rss_mb=resident_memory_mb(), tuner=self.tuner_id)
            make_dir(out_dir / "trial_stats")
            atomic_write_text(out_dir / "trial_stats" / f"{trial.trial_id}.json",
                              json.dumps(stats) + "\n")
            shown = {k: v for k, v in stats.items() if k != "history"}
            print(f"trial {trial.trial_id}: {json.dumps(trial.hyperparameters.values)} "
                  f"{shown}", flush=True)

    options = {"objective": kt.Objective("val_accuracy", "max"), "seed": seed,
               "directory": str(out_dir), "project_name": "keras_tuner",
               "overwrite": overwrite}
    if runtime.strategy.num_replicas_in_sync > 1:
        options["distribution_strategy"] = runtime.strategy
    if kind == "hyperband":
        options.update(max_epochs=epochs_per_trial, factor=3, max_retries_per_trial=0)
        tuner = TimedTuner(hypermodel, **options)
        tuner.oracle.max_trials = max_trials
        return tuner
    return TimedTuner(hypermodel, max_trials=max_trials, **options)


def subset(data, fraction, seed):
    """Keeps a stratified ``fraction`` of the training split (validation untouched)."""
    if fraction >= 1.0:
        return data
    _, kept = stratified_split(data.y_train, max(data.num_classes,
                                                 round(fraction * len(data.y_train))), seed)
    data.mean  # noqa: B018  (the whole training split's statistics, as before the subset)
    data.x_train, data.y_train = data.x_train[kept], data.y_train[kept]
    if data.coarse_train is not None:
        data.coarse_train = data.coarse_train[kept]
    return data
