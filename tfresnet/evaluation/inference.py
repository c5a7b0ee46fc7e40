"""Loading a run to evaluate it, and the test metrics."""

from pathlib import Path

import numpy as np

from tfresnet.data import Dataset
from tfresnet.data.folders import load_labelled_folder
from tfresnet.data.sources import SOURCES
from tfresnet.runs.probabilities import predict_probabilities, topk_accuracy
from tfresnet.runs.run_folder import RunFolder, load_model, load_run_data

TOP_K = 5  # the second accuracy every report gives


def has_top_k(num_classes):
    """Whether top-5 accuracy says anything: only with more than 5 classes (with 5 or
    fewer it is always 100 %)."""
    return num_classes > TOP_K


def coarse_accuracy(probabilities, labels, fine_to_coarse):
    """Fraction whose predicted class lies in the true class's superclass (CIFAR-100)."""
    predicted = fine_to_coarse[np.argmax(probabilities, axis=1)]
    return float(np.mean(predicted == fine_to_coarse[np.asarray(labels)]))


def test_metrics(model, images, labels, fine_to_coarse=None, batch_size=256):
    """Top-1, top-5 (with more than 5 classes) and (for CIFAR-100) coarse accuracy of
    ``model`` on a labelled set."""
    probabilities = predict_probabilities(model, images, batch_size)
    metrics = {"test_accuracy": topk_accuracy(probabilities, labels, 1)}
    if has_top_k(probabilities.shape[1]):
        metrics["test_top5"] = topk_accuracy(probabilities, labels, TOP_K)
    if fine_to_coarse is not None:
        metrics["test_coarse_accuracy"] = coarse_accuracy(probabilities, labels, fine_to_coarse)
    return metrics


def add_run_arguments(parser):
    """The arguments of a command that loads a run: target, --dataset, --data-dir."""
    parser.add_argument("target", help="run folder (with best.keras) or a .keras file")
    parser.add_argument("--dataset", help="data set to use (default: the run's own); a "
                                          "labelled image folder it did not train on is "
                                          "used whole, or its test/")
    parser.add_argument("--data-dir", help="folder with the CIFAR pickles")


def load_run(target, dataset=None, data_dir=None, split="test"):
    """The model of a run folder or ``.keras`` file and the labelled images to show, with
    the name of their split.

    The data set defaults to the one recorded in the run's config (or the model): its
    test split, else its validation split. An image folder other than the run's own is
    held out (`load_held_out`): its ``test/``, else all of it.
    """
    model = load_model(target)
    if dataset and _is_held_out(target, model, dataset):
        data, split = load_held_out(dataset, model)
        return model, data, data.x_test, data.y_test, split
    data = load_run_data(target, model, dataset, data_dir)
    if split == "test" and data.x_test is None:
        split = "val"
    images, labels = (data.x_test, data.y_test) if split == "test" else (data.x_val, data.y_val)
    return model, data, images, labels, split


def _is_held_out(target, model, dataset):
    """Whether ``dataset`` is an image folder other than the one the run trained on."""
    folder = Path(dataset).expanduser()
    if dataset in SOURCES or not folder.is_dir():
        return False
    trained = RunFolder.of(target).config().get("dataset") or model.dataset
    return not trained or Path(trained).expanduser().resolve() != folder.resolve()


def load_held_out(folder, model):
    """A labelled image folder the run did not train on, as a `Dataset` whose test split
    is every image to score (`tfresnet.data.folders.load_labelled_folder`: its ``test/``,
    else all of it) in the model's classes and view; returns it and that split's name
    (``"test"`` or ``"all"``)."""
    images, labels, split = load_labelled_folder(folder, model.class_names, model.view)
    none = np.zeros(0, np.int32)
    return Dataset(name=str(folder), x_train=images[none], y_train=none, x_val=images[none],
                   y_val=none, x_test=images, y_test=labels,
                   class_names=list(model.class_names)), split
