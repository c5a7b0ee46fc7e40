"""``python -m tfresnet.compare``: several runs side by side -- one table, one plot.

Reads each run's ``summary.json`` (training runs and baselines alike) and, where present,
its ``history.csv``. Writes ``comparison.md``, ``comparison.csv`` and ``comparison.png``
(validation accuracy against epoch and against wall time) into ``--out-dir``.

Example:
    python -m tfresnet.compare saved_models/r18-scratch saved_models/r18-finetune \\
        saved_models/knn-cifar10 --out-dir saved_models/comparison
"""





import sys
from pathlib import Path

from tfresnet.errors import command_parser, run_cli
from tfresnet.evaluation.compare import load_runs, plot, write_table


def main(argv=None):
    parser = command_parser("tfresnet.compare", __doc__)
    parser.add_argument("runs", nargs="+", help="run folders (with summary.json)")
    parser.add_argument("--out-dir", default="comparison", help="where the outputs go")
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print("\n".join(write_table(runs, out_dir)))
    plot(runs, out_dir)
    print(f"written to {out_dir}/comparison.md, .csv, .png")
    return 0


def cli():
    sys.exit(run_cli("tfresnet.compare", main))



if __name__ == "__main__":
    cli()
