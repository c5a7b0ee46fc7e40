import cv2
import numpy as np
import pytest

from conftest import TINY, run_cli
from tfresnet.cli.train import main as train_main
from tfresnet.cli.visualize import main as visualize_main
from tfresnet.evaluation.pictures import BORDER, GREEN, HEADER_HEIGHT, RED, draw_predictions


def fixture(count=12, classes=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (count, size, size, 3), np.uint8)
    labels = rng.integers(0, classes, count)
    probabilities = rng.dirichlet(np.ones(classes), count).astype(np.float32)
    return images, labels, probabilities, [f"class{i}" for i in range(classes)]


def test_size_follows_classes_and_per_row():
    images, labels, probabilities, names = fixture()
    picture, layout, _ = draw_predictions(images, labels, probabilities, names, "h",
                                          per_row=5, scale=3)
    cell = 8 * 3 + 2 * BORDER + 2
    assert picture.shape == (HEADER_HEIGHT + 3 * cell, layout.label_width + 5 * cell, 3)
    wider, _, _ = draw_predictions(images, labels, probabilities, names, "h", per_row=7, scale=3)
    assert wider.shape[1] - picture.shape[1] == 2 * cell and wider.shape[0] == picture.shape[0]


def test_cells_hold_their_images_with_the_right_border_and_order():
    images, labels, probabilities, names = fixture(count=30)
    picture, layout, placement = draw_predictions(images, labels, probabilities, names, "h",
                                                  per_row=20, scale=2)
    predicted = probabilities.argmax(axis=1)
    assert len(placement) == 30
    for (row, column), index in placement.items():
        assert predicted[index] == row
        y, x = layout.origin(row, column)
        tile = picture[y:y + 16, x:x + 16]
        upscaled = np.repeat(np.repeat(images[index], 2, axis=0), 2, axis=1)
        np.testing.assert_array_equal(tile, upscaled[..., ::-1])  # RGB drawn as BGR
        expected = GREEN if labels[index] == row else RED
        assert tuple(picture[y - 1, x + 5]) == expected  # the frame just above the image
    for row in range(3):
        row_conf = [probabilities[placement[(row, c)], row] for c in range(20)
                    if (row, c) in placement]
        assert row_conf == sorted(row_conf, reverse=True)


def test_per_row_limit_top_and_spread():
    images, labels, probabilities, names = fixture(count=60)
    predicted = probabilities.argmax(axis=1)
    _, _, top = draw_predictions(images, labels, probabilities, names, "h", per_row=3,
                                 select="top")
    _, _, spread = draw_predictions(images, labels, probabilities, names, "h", per_row=3)
    for row in range(3):
        members = np.flatnonzero(predicted == row)
        ranked = members[np.argsort(-probabilities[members, row], kind="stable")]
        assert [top[(row, c)] for c in range(3)] == list(ranked[:3])
        # Most confident, the middle one and the least confident, in that order.
        middle = ranked[round((len(ranked) - 1) / 2)]
        assert [spread[(row, c)] for c in range(3)] == [ranked[0], middle, ranked[-1]]


@pytest.mark.slow
def test_visualize_cli_on_a_trained_run(tmp_path):
    assert train_main([*TINY, "--epochs", "1", "--name", "v", "--output-dir", str(tmp_path),
                       "--visualize"]) == 0
    assert (tmp_path / "v" / "test_visualisation.png").exists()  # train draws it at the end
    out = tmp_path / "pic.png"
    result = run_cli("tfresnet.visualize", tmp_path / "v", "--out", out, "--per-row", "10")
    assert result.returncode == 0, result.stderr
    picture = cv2.imread(str(out))
    assert picture.shape == (HEADER_HEIGHT + 10 * (64 + 2 * BORDER + 2),
                             picture.shape[1], 3)
    assert "10 rows" in result.stdout
    assert visualize_main([str(tmp_path / "v"), "--per-row", "10", "--cam"]) == 0
    overlaid = cv2.imread(str(tmp_path / "v" / "test_visualisation_cam.png"))
    assert overlaid.shape == picture.shape  # the same rows and cells ...
    drawn = np.any(picture[HEADER_HEIGHT:] != 24, axis=2)  # images, frames, class names
    changed = np.any(overlaid[HEADER_HEIGHT:] != picture[HEADER_HEIGHT:], axis=2)
    assert changed[drawn].mean() > 0.5  # ... with every image overlaid
