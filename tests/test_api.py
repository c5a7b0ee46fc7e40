"""The Python API, through README's "From Python" section run exactly as written, and
what importing tfresnet leaves alone."""

import re
import subprocess
import sys

import pytest

from conftest import REPO


def readme_python_section():
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_section_runs_as_written(tmp_path):
    done = subprocess.run([sys.executable, "-c", readme_python_section()], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "saved_models" / "python-demo"
    for name in ("best.keras", "summary.json", "test_visualisation.png",
                 "test_visualisation_cam.png"):
        assert (run / name).is_file(), name
    assert "'class':" in done.stdout and "digit.png" in done.stdout


IMPORT_CHECK = """
import matplotlib, keras, numpy as np
before = (matplotlib.get_backend(), keras.mixed_precision.global_policy().name,
          keras.config.floatx(), np.random.get_state()[1][:4].tolist())
import tfresnet
after = (matplotlib.get_backend(), keras.mixed_precision.global_policy().name,
         keras.config.floatx(), np.random.get_state()[1][:4].tolist())
assert before == after, (before, after)
assert callable(tfresnet.fit) and callable(tfresnet.classify) and callable(tfresnet.draw)
"""


def test_importing_tfresnet_changes_no_global_setting():
    done = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("blocked,module,args,extra", [
    ("sklearn.neighbors", "tfresnet.baselines", ["knn", "--dataset", "digits"], "baselines"),
    ("keras_hub", "tfresnet.train", ["--dataset", "digits", "--model", "resnet18_imagenet",
                                     "--weights", "{tmp}", "--transfer", "frozen", "--epochs", "1"],
     "pretrained"),
])
def test_a_missing_extra_is_one_line_naming_its_install(tmp_path, blocked, module, args, extra):
    """The default install lacks the extras: each command that needs one says which. The
    digits demo data loads without scikit-learn."""
    script = (f"import sys; sys.modules[{blocked!r}] = None; sys.modules['sklearn'] = None\n"
              "from tfresnet.data.digits import load_digits_rgb; load_digits_rgb()\n"
              f"from {module.replace('tfresnet.', 'tfresnet.cli.')} import main\n"
              "from tfresnet.errors import run_cli\n"
              f"sys.exit(run_cli({module!r}, main, {args!r}))")
    done = subprocess.run([sys.executable, "-c", script.replace("{tmp}", str(tmp_path))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f'pip install "tfresnet[{extra}]"' in lines[0], lines
