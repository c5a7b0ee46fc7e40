"""The package's layout: one import order, short modules by job, thin commands over the library."""

import ast
import graphlib
import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tfresnet

PACKAGE = Path(tfresnet.__file__).parent
COMMANDS = sorted(p.stem for p in (PACKAGE / "cli").glob("*.py") if p.stem != "__init__")
MODULES = sorted(PACKAGE.rglob("*.py"))

# The import order, lowest floor first: a module imports from its own package (or module)
# and from the floors before it, never from its own floor or above. The top floor holds
# the commands, their `python -m` entry points and the package's facade (`tfresnet`).
ORDER = [
    ("errors", "compat", "quiet"),
    ("settings",),
    ("runtime",),
    ("keras_fixes",),
    ("data",),
    ("losses",),
    ("models",),
    ("optim",),
    ("config",),
    ("runs",),
    ("export",),
    ("evaluation",),
    ("training",),
    ("tuning",),
    ("api",),
    ("cli", "tfresnet"),
]
FLOOR = {unit: floor for floor, units in enumerate(ORDER) for unit in units}

MAX_LINES = 300

MAX_IMPORTS = 6
# Modules importing more tfresnet modules, at today's counts (which may only fall): the
# package facades gather their package; config.py is made of every part's settings view;
# run, bench, the tuner's run and search, and the API put a run together; the report and
# the exporter read a run, its model and its data.
MANY_IMPORTS = {"__init__.py": 9, "data/__init__.py": 8, "models/__init__.py": 9,
                "config.py": 8, "training/run.py": 13, "training/bench.py": 13,
                "tuning/run.py": 11, "tuning/search.py": 11, "api.py": 7,
                "evaluation/report.py": 7, "export/exporter.py": 7}


def module_name(path):
    """The dotted name of the module at ``path`` (a package: its ``__init__.py``)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name):
    """Whether ``name`` is a tfresnet module or package."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return name.split(".")[0] == "tfresnet" and (
        path.with_suffix(".py").is_file() or (path / "__init__.py").is_file())


def imported_modules(path):
    """Every module ``path`` imports, at any depth (function-level imports included):
    ``from m import n`` imports ``m.n`` where that is a tfresnet module, else ``m``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import"
            found |= {f"{node.module}.{alias.name}" if is_module(f"{node.module}.{alias.name}")
                      else node.module for alias in node.names}
    return found


def tfresnet_imports(path):
    return {name for name in imported_modules(path) if name.split(".")[0] == "tfresnet"}


def entry_points(path):
    """The modules ``python -m`` runs for the commands: tfresnet/<command>.py, or the
    package's __main__.py where the library holds a package of the command's name."""
    return path.name == "__main__.py" or (path.parent == PACKAGE and path.stem in COMMANDS)


def unit(name):
    """The floor-holding unit of module ``name``: its top-level module or package of
    tfresnet (``cli`` for an entry point, ``tfresnet`` for the facade)."""
    path = PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
    if entry_points(path):
        return "cli"
    return name.split(".")[1] if "." in name else name


def relative(path):
    return str(path.relative_to(PACKAGE))


def test_every_module_has_a_floor_and_imports_only_below_it():
    assert {unit(module_name(p)) for p in MODULES} == set(FLOOR)
    against = {}
    for path in MODULES:
        here = unit(module_name(path))
        for name in sorted(tfresnet_imports(path)):
            there = unit(name)
            if there != here and FLOOR[there] >= FLOOR[here]:
                against.setdefault(relative(path), []).append(name)
    assert against == {}


def test_the_packages_import_each_other_without_a_cycle():
    graph = {}
    for path in MODULES:
        here = unit(module_name(path))
        graph.setdefault(here, set()).update(unit(n) for n in tfresnet_imports(path))
        graph[here].discard(here)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        pytest.fail(f"the packages import each other in a circle: {' -> '.join(err.args[1])}")


def test_no_module_is_longer_than_300_lines():
    lines = {relative(p): len(p.read_text().splitlines()) for p in MODULES}
    assert {k: n for k, n in lines.items() if n > MAX_LINES} == {}


def test_every_module_starts_with_a_one_line_docstring():
    summaries = {relative(p): (ast.get_docstring(ast.parse(p.read_text()), clean=False)
                               or "").splitlines() for p in MODULES}
    assert [k for k, lines in summaries.items() if not lines or not lines[0].strip()
            or (len(lines) > 1 and lines[1].strip())] == []


def test_no_module_imports_more_than_six_tfresnet_modules():
    counts = {relative(p): len(tfresnet_imports(p)) for p in MODULES}
    assert set(MANY_IMPORTS) <= set(counts)
    assert {k: n for k, n in counts.items() if n > MANY_IMPORTS.get(k, MAX_IMPORTS)} == {}


IMPORT_UNDER_SLURM = """
import os, tensorflow as tf
probes = []
tf.config.list_physical_devices = lambda *args, **kwargs: probes.append(args) or []
import tfresnet
print(os.environ.get("CUDA_VISIBLE_DEVICES"), len(probes))
"""


def test_importing_tfresnet_under_slurm_leaves_cuda_visible_devices_as_it_was():
    """Task 1 of 2 on a node of 4 GPUs: `tfresnet.runtime.devices.gpus` would narrow the
    list to 2,3; importing tfresnet neither does that nor probes a device."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID="42", SLURM_JOB_GPUS="0,1,2,3", SLURM_STEP_GPUS="0,1,2,3",
               SLURM_STEP_NUM_TASKS="2", SLURM_STEP_TASKS_PER_NODE="2",
               SLURM_GPUS_ON_NODE="4", SLURM_LOCALID="1", CUDA_VISIBLE_DEVICES="0,1,2,3")
    done = subprocess.run([sys.executable, "-c", IMPORT_UNDER_SLURM], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0,1,2,3", "0"]


def test_no_library_module_imports_a_command_module():
    commands = {f"tfresnet.cli.{c}" for c in COMMANDS} | {f"tfresnet.{c}" for c in COMMANDS}
    library = [p for p in MODULES
               if "cli" not in p.relative_to(PACKAGE).parts and not entry_points(p)]
    assert len(library) > 30
    offenders = {relative(p): sorted(imported_modules(p) & (commands | {"tfresnet.cli"}))
                 for p in library}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_command_has_its_module_and_console_script():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(
        group="console_scripts") if e.name.startswith("tfresnet-")}
    assert {f"tfresnet-{c}": f"tfresnet.cli.{c}:cli" for c in COMMANDS} == scripts
    for command in COMMANDS:
        module = importlib.import_module(f"tfresnet.cli.{command}")
        assert callable(module.main) and callable(module.cli)
        shim = PACKAGE / f"{command}.py"
        if not shim.exists():  # a library package of the same name: its __main__
            shim = PACKAGE / command / "__main__.py"
        assert f"from tfresnet.cli.{command} import cli" in shim.read_text(), shim


# The modules that may take a whole `TrainConfig`: the config itself, the run folder (it
# reads and writes config.json) and the modules that plan or run a run: a training run, its
# benchmark, a search, its trials and its LR range test, the Python API. Every other
# function takes settings views (`tfresnet.settings`) or plain values.
WHOLE_CONFIG = {"config.py", "api.py", "runs/run_folder.py", "training/plan.py",
                "training/run.py", "training/bench.py", "tuning/run.py", "tuning/search.py",
                "tuning/lr_range.py"}


def functions(path):
    """``(name, parameter)`` of every function defined in ``path``, at any depth."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            arguments = node.args
            for parameter in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                              arguments.vararg, arguments.kwarg]:
                if parameter is not None:
                    yield getattr(node, "name", "<lambda>"), parameter


def test_only_config_and_the_run_modules_take_a_whole_train_config():
    """The one-line check of CONTRIBUTING.md: no function outside `WHOLE_CONFIG` has a
    parameter called ``config`` or annotated `TrainConfig` (Keras' ``from_config`` takes a
    layer's config dict)."""
    offenders = [f"{relative(path)}: {name}({parameter.arg})"
                 for path in MODULES if relative(path) not in WHOLE_CONFIG
                 for name, parameter in functions(path) if name != "from_config"
                 and (parameter.arg == "config" or "TrainConfig" in ast.unparse(
                     parameter.annotation or ast.Constant(None)))]
    assert offenders == []


def names_the_transfer_mode(node):
    """``transfer``, ``settings.transfer`` or ``saved["transfer"]``."""
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "transfer"
    return getattr(node, "id", getattr(node, "attr", None)) == "transfer"


def is_text(node):
    """A string literal, or a tuple, list or set of them."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return bool(node.elts) and all(map(is_text, node.elts))
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def test_the_transfer_mode_is_compared_as_the_enum_outside_config():
    """`tfresnet.models.settings.Transfer` everywhere; the strings only where JSON and the
    flags are read and written (config.py)."""
    offenders = [f"{relative(path)}:{node.lineno}"
                 for path in MODULES if relative(path) != "config.py"
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Compare)
                 and any(map(names_the_transfer_mode, [node.left, *node.comparators]))
                 and any(map(is_text, [node.left, *node.comparators]))]
    assert offenders == []


def test_the_imagenet_suffix_is_spelled_in_one_module():
    """``_imagenet`` as code (not in messages or docstrings): one constant and the one
    function that parses a model name with it (`tfresnet.models.backbones`)."""
    spelled = {relative(path) for path in MODULES
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and node.value == "_imagenet"}
    assert spelled == {"models/backbones.py"}
