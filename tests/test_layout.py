"""The package's layout: commands are thin modules over the library, never the reverse."""

import ast
import importlib
import importlib.metadata
from pathlib import Path

import tfresnet

PACKAGE = Path(tfresnet.__file__).parent
COMMANDS = sorted(p.stem for p in (PACKAGE / "cli").glob("*.py") if p.stem != "__init__")


def entry_points(path):
    """The modules ``python -m`` runs for the commands: tfresnet/<command>.py, or the
    package's __main__.py where the library holds a package of the command's name."""
    return path.name == "__main__.py" or (path.parent == PACKAGE and path.stem in COMMANDS)


def imported_modules(path):
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_no_library_module_imports_a_command_module():
    commands = {f"tfresnet.cli.{c}" for c in COMMANDS} | {f"tfresnet.{c}" for c in COMMANDS}
    library = [p for p in PACKAGE.rglob("*.py")
               if "cli" not in p.relative_to(PACKAGE).parts and not entry_points(p)]
    assert len(library) > 30
    offenders = {str(p.relative_to(PACKAGE)): sorted(imported_modules(p) & (
        commands | {"tfresnet.cli"})) for p in library}
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
