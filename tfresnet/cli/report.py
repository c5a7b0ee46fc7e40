"""``python -m tfresnet.report RUN``: the run on one self-contained HTML page.

``report.html`` (beside the model, or ``--out``) holds the settings and library versions,
the test metrics (top-1, top-5, CIFAR-100 superclass accuracy, calibration error), the
learning curves, the confusion matrix with the most-confused pairs, the first rows of
``test_visualisation.png``, a Grad-CAM strip and, when the run was exported, the export
table. Every picture is embedded, nothing is fetched from the network, and the page reads
on a phone: the page a student hands in with the homework.

Example:
    python -m tfresnet.report saved_models/resnet18-cifar100-20261123-101500
"""





import sys
from pathlib import Path

from tfresnet.errors import command_parser, run_cli
from tfresnet.evaluation.inference import add_run_arguments
from tfresnet.evaluation.report import build_report
from tfresnet.runs.files import atomic_write_text
from tfresnet.runs.run_folder import RunFolder


def main(argv=None):
    parser = command_parser("tfresnet.report", __doc__)
    add_run_arguments(parser)
    parser.add_argument("--out", help="output HTML (default: report.html beside the model)")
    args = parser.parse_args(argv)
    page = build_report(args.target, args.dataset, args.data_dir)
    out = Path(args.out) if args.out else RunFolder.of(args.target) / "report.html"
    atomic_write_text(out, page)
    print(f"{out}: {len(page) / 1e6:.2f} MB, self-contained")
    return 0


def cli():
    sys.exit(run_cli("tfresnet.report", main))



if __name__ == "__main__":
    cli()
