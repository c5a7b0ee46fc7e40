"""One search: keras-tuner trials or the LR range test, resumable, writing ``best_hparams.json``."""

import dataclasses
import json
import os
from pathlib import Path

from tfresnet.compat import canonical
from tfresnet.errors import UserError
from tfresnet.optim.optimizers import OPTIMIZERS
from tfresnet.runs.files import atomic_write_text, make_dir
from tfresnet.runtime.session import configure
from tfresnet.training.pipelines import load_data
from tfresnet.training.plan import input_size, make_plan
from tfresnet.tuning.launch import tuner_role
from tfresnet.tuning.lr_range import lr_range_test
from tfresnet.tuning.results import write_search_results
from tfresnet.tuning.search import SEARCH_SPACE, ResNetHyperModel, make_tuner, subset

METHODS = ("keras-tuner", "lr-range")


@dataclasses.dataclass(frozen=True)
class Search:
    """What one search does, apart from the base run it starts from (a `TrainConfig`).

    Args:
        method: ``keras-tuner`` trials, or the ``lr-range`` test.
        tuner: keras-tuner's algorithm (`tfresnet.tuning.search.TUNERS`).
        search: hyper-parameters searched besides the learning rate (`SEARCH_SPACE`).
        lr_min, lr_max: the learning-rate range, searched log-uniformly.
        max_trials, epochs_per_trial: the size of a keras-tuner search.
        range_steps: steps of the LR range test.
        subset: the fraction of the training set searched on.
        fresh: start the search over instead of continuing it.
        parallel: trials at a time (a chief and this many workers).
    """

    method: str = "keras-tuner"
    tuner: str = "random"
    search: tuple = ()
    lr_min: float = 1e-4
    lr_max: float = 1.0
    max_trials: int = 10
    epochs_per_trial: int = 3
    range_steps: int = 200
    subset: float = 1.0
    fresh: bool = False
    parallel: int = 1

    def validate(self):
        """A `UserError` for a setting no search can run with."""
        if self.method not in METHODS:
            raise UserError(f"method must be one of {', '.join(METHODS)}. "
                            f"Received: {self.method}")
        if not (0 < self.lr_min < self.lr_max):
            raise UserError(f"the learning-rate range must satisfy 0 < --lr-min < --lr-max. "
                            f"Received: {self.lr_min} .. {self.lr_max}")
        if self.max_trials <= 0 or self.epochs_per_trial <= 0 or self.range_steps < 10:
            raise UserError("--max-trials and --epochs-per-trial must be positive and "
                            "--range-steps at least 10")
        if self.parallel < 1:
            raise UserError(f"--parallel must be at least 1. Received: {self.parallel}")
        if (self.parallel > 1 or tuner_role()) and self.method != "keras-tuner":
            raise UserError("parallel tuning runs keras-tuner trials; the lr-range test is "
                            "one run: drop --parallel (and the KERASTUNER_* variables)")
        if not 0 < self.subset <= 1:
            raise UserError(f"--subset must be in (0, 1]. Received: {self.subset}")
        unknown = sorted(set(self.search) - set(SEARCH_SPACE))
        if unknown:
            raise UserError(f"unknown hyperparameter(s) {', '.join(unknown)}; searchable: lr "
                            f"(always) and {', '.join(SEARCH_SPACE)}")


def check_trial_settings(search, base):
    """Refuses, in one line, a base setting that some trial would ignore: the base run
    with each searched optimizer is validated as `train` would validate it (``--momentum``
    given and ``--search optimizer``, whose Adam trials have none)."""
    if "optimizer" not in search.search:
        return
    for name in OPTIMIZERS:
        try:
            base.updated({"optimizer": name}, "search space").validate()
        except UserError as err:
            raise UserError(f"--search optimizer tries {name}, where {err}")


def tune(search, base):
    """Runs ``search`` from the base run ``base`` (its ``name`` names the search, its
    ``seed`` seeds it); returns the best hyper-parameters written (empty on a keras-tuner
    worker, which runs trials and writes only their own records)."""
    search.validate()
    check_trial_settings(search, base)
    role = tuner_role()
    name = base.name or f"{base.model}-{Path(base.dataset).name}"
    out_dir = Path(base.output_dir) / "tune" / name
    space = {"method": search.method, "tuner": search.tuner, "search": sorted(search.search),
             "lr_range": [search.lr_min, search.lr_max], "base": canonical(base.to_dict()),
             "subset": search.subset, "epochs_per_trial": search.epochs_per_trial}
    space_path = out_dir / "search.json"
    if space_path.exists() and not (search.fresh and role != "worker"):
        saved = json.loads(space_path.read_text())
        saved["base"] = canonical(saved.get("base", {}))  # 0.1-0.4 values compare as today's
        if saved != space:
            changed = sorted(k for k in space if saved.get(k) != space[k])
            raise UserError(f"{out_dir} holds a search with another setup ({', '.join(changed)}"
                            "); use another --name, or --fresh to start over")
    runtime = configure(base.runtime_settings, base.model, base.width)
    size = input_size(base)
    data = subset(load_data(base.data_settings, base.seed, size), search.subset, base.seed)
    plan = make_plan(base, data, runtime, size)  # trials plan their own (their batch)
    if not len(data.x_val):
        raise UserError("tuning needs a validation split; drop --val-size 0")
    if role != "worker":
        make_dir(out_dir)  # only now: a refused search leaves nothing behind
        atomic_write_text(space_path, json.dumps(space, indent=2) + "\n")
    lr_range = (search.lr_min, search.lr_max)
    if search.method == "lr-range":
        suggestion = lr_range_test(base, data, runtime, plan, lr_range, search.range_steps,
                                   out_dir)
        hparams = {"model": base.model, "lr": suggestion}
        atomic_write_text(out_dir / "best_hparams.json", json.dumps(hparams, indent=2) + "\n")
        print(f"suggested learning rate: {suggestion:.3g}")
    else:
        hypermodel = ResNetHyperModel(base, data, runtime, search.search, lr_range,
                                      plan.input_size)
        tuner = make_tuner(search.tuner, hypermodel, out_dir, runtime, search.max_trials,
                           search.epochs_per_trial, base.seed,
                           overwrite=search.fresh and role != "worker")
        tuner.search()
        if role == "worker":
            print(f"{os.environ['KERASTUNER_TUNER_ID']}: the search is complete")
            return {}
        hparams, trials = write_search_results(tuner, out_dir, base.model, base.dataset,
                                               search.epochs_per_trial)
        print(f"{len(trials)} trials; best: {json.dumps(hparams)}")
    print(f"results: {out_dir}")
    return hparams

