"""``python -m tfresnet.evaluate``: test metrics of a trained model, with the details.

Writes, next to the model (or into ``--out-dir``): ``evaluation.json`` (top-1, top-5,
CIFAR-100 superclass accuracy, expected calibration error, most-confused pairs),
``per_class_accuracy.csv`` and ``confusion_matrix.png`` (CIFAR-100 classes grouped by
superclass so the 100x100 matrix stays readable).

The images are the run's test split (its validation split when it has none), or with
``--dataset FOLDER`` of a labelled image folder it did not train on, every image of
``FOLDER/test/`` when there is one, else of the whole folder; its classes must be the
model's (all or some).

Example:
    python -m tfresnet.evaluate saved_models/resnet18-cifar100-20261123-101500 --tta flip
    python -m tfresnet.evaluate saved_models/pets --dataset my_photos/
"""





import sys

from tfresnet.errors import command_parser, run_cli
from tfresnet.evaluation.inference import add_run_arguments
from tfresnet.evaluation.scores import evaluate


def main(argv=None):
    parser = command_parser("tfresnet.evaluate", __doc__)
    add_run_arguments(parser)
    parser.add_argument("--tta", choices=["flip"], help="test-time augmentation")
    parser.add_argument("--out-dir", help="where the reports go (default: beside the model)")
    args = parser.parse_args(argv)
    result = evaluate(args.target, args.dataset, args.data_dir, args.tta, args.out_dir)
    scored = (f"every image of {result['dataset']}" if result["split"] == "all"
              else f"{result['dataset']} {result['split']}")
    print(f"{scored} ({result['images']:,} images): top-1 {100 * result['top1']:.2f}%"
          + (f"  top-5 {100 * result['top5']:.2f}%" if "top5" in result else "")
          + (f"  superclass {100 * result['coarse_accuracy']:.2f}%"
             if "coarse_accuracy" in result else "")
          + f"  ECE {result['expected_calibration_error']:.4f}")
    for pair in result["most_confused"][:5]:
        print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']}")
    return 0


def cli():
    sys.exit(run_cli("tfresnet.evaluate", main))



if __name__ == "__main__":
    cli()
