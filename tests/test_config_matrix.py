"""The configuration space as a matrix (experiments/config_matrix.py): the cover is
pairwise, and the suite runs the quick cover's cells, each through the commands a user
runs."""

import itertools
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import config_matrix  # noqa: E402

QUICK = config_matrix.cover(config_matrix.QUICK_DIMENSIONS)


@pytest.mark.parametrize("dimensions", [config_matrix.DIMENSIONS,
                                        config_matrix.QUICK_DIMENSIONS])
def test_every_pair_of_values_is_in_a_cell_that_trains_or_else_in_one_refused(dimensions):
    cells = config_matrix.cover(dimensions)
    every = [dict(zip(dimensions, values)) for values in itertools.product(*dimensions.values())]
    for (a, values_a), (b, values_b) in itertools.combinations(dimensions.items(), 2):
        for va, vb in itertools.product(values_a, values_b):
            holding = [c for c in every if c[a] == va and c[b] == vb]
            trainable = any(not config_matrix.expected_refusals(c) for c in holding)
            chosen = [c for c in cells if c[a] == va and c[b] == vb
                      and bool(config_matrix.expected_refusals(c)) != trainable]
            assert chosen, f"no {'trained' if trainable else 'refused'} cell has {a}={va}, {b}={vb}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    return (config_matrix.write_folder(root / "photos"),
            config_matrix.write_weights(root / "backbone.keras"))


@pytest.mark.slow
@pytest.mark.parametrize("number", range(1, len(QUICK) + 1))
def test_a_cell_of_the_quick_cover_trains_or_is_refused_in_one_line(number, sources, tmp_path):
    folder, weights = sources
    record = config_matrix.run_cell(QUICK[number - 1], folder, weights, tmp_path, "cell",
                                    kill=False)
    assert record["passed"], record
