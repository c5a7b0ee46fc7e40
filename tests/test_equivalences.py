"""The equivalence table's pairs (experiments/equivalences.py) that run in seconds: each
configuration against the run it must equal. The rest of the table is covered elsewhere
in the suite: replicas and workers against one device in test_distributed.py and
test_replicas.py, a tuner trial against train in test_tune.py, resume in
test_gpu_defaults.py and test_faults.py."""

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import equivalences  # noqa: E402


def assert_equal(rows):
    assert rows and all(row["equal"] for row in rows), equivalences.table(rows)


@pytest.mark.slow
def test_augmentation_in_the_step_draws_as_the_host_does():
    host = equivalences.augmentation_draws(compiled=False, steps=150)
    for draws in (equivalences.augmentation_draws(compiled=True, steps=150),
                  equivalences.augmentation_draws(compiled=True, replicas=2, steps=150)):
        assert min(equivalences.same_distribution(host, draws).values()) > 0.01
    # The test can tell: flips of another probability are refuted.
    skewed = {**host, "flip": host["flip"] | (host["crop dy"] > 2)}
    assert equivalences.same_distribution(host, skewed)["flip"] < 0.01


def test_batch_norm_in_bfloat16_under_xla_is_float32_within_rounding(tmp_path):
    assert_equal(equivalences.bfloat16_batch_norm(tmp_path))
