"""``python -m tfresnet.export``: a trained model as SavedModel, TFLite or ONNX.

Every export takes what the ``.keras`` file takes -- raw RGB pixels, 0-255, as float32,
shape ``(batch, height, width, 3)`` at the model's input size, normalisation inside -- and
returns class probabilities (softmax), shape ``(batch, classes)``. The class names go
beside it (``<name>.labels.txt``, one per line, in output order).

An export is declared done only after it was run: its probabilities are compared with the
Keras model's on the run's test images (random images when the data set is not at hand),
and the largest difference, the top-1 agreement and the file size are printed and stored
in ``export.json`` beside it (one entry per export). ``--quantize int8`` calibrates on
training images and reports its test accuracy next to the float model's.

Exporters: Keras' ``model.export`` (SavedModel; ONNX through tf2onnx, installed with
``pip install -e ".[onnx]"``), TensorFlow's TFLite converter, the LiteRT interpreter.

Example:
    python -m tfresnet.export saved_models/my-run --format tflite --quantize int8
    python -m tfresnet.export saved_models/my-run/best.keras --format saved_model --out srv/1
"""





import sys

from tfresnet.errors import command_parser, run_cli
from tfresnet.export.exporter import export, quantizations
from tfresnet.export.formats import FORMATS


def main(argv=None):
    parser = command_parser("tfresnet.export", __doc__)
    parser.add_argument("target", help="run folder (with best.keras) or a .keras file")
    parser.add_argument("--format", required=True, choices=list(FORMATS))
    parser.add_argument("--out", help="where to write (default: <run>/export/model.<format>)")
    parser.add_argument("--quantize", choices=quantizations(),
                        help="quantized weights (tflite: float16 or int8)")
    parser.add_argument("--dataset", help="data set to check on (default: the run's own)")
    parser.add_argument("--data-dir", help="folder with the CIFAR pickles")
    parser.add_argument("--check-images", type=int, default=500,
                        help="test images the export is compared on")
    args = parser.parse_args(argv)
    entry = export(args.target, args.format, args.out, args.quantize, args.dataset,
                   args.data_dir, args.check_images)
    line = (f"{entry['path']}: {entry['bytes'] / 1e6:.2f} MB; on {entry['check_images']} "
            f"{entry['check_source']} images: max probability difference "
            f"{entry['max_probability_difference']:.2e}, top-1 agreement "
            f"{100 * entry['top1_agreement']:.2f}%")
    if "export_accuracy" in entry:
        line += (f"; accuracy {100 * entry['export_accuracy']:.2f}% "
                 f"(Keras {100 * entry['keras_accuracy']:.2f}%)")
    print(line)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.export", main))



if __name__ == "__main__":
    cli()
