"""The documentation stays a first read and stays true: README.md is at most 12 KB and
states no dated figure; every relative link of README.md, CONTRIBUTING.md and docs/*.md
reaches a file (and a heading) that exists; every ``python -m tfresnet.<command>`` line of
their bash blocks is accepted by that command's own argument parser. Commands are parsed,
never run: nothing trains."""

import ast
import importlib
import inspect
import re
import shlex
import textwrap

import pytest

from conftest import REPO

README = REPO / "README.md"
PAGES = [README, REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
TEST_COMMAND = 'pip install -e ".[all,test]" && ruff check . && python -m pytest -q'

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMG = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"")


def rel(path):
    return str(path.relative_to(REPO))


def unfenced(text):
    """``text`` with its fenced blocks blanked (a ``#`` there is a comment, not a heading)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def prose(text):
    """``text`` without its fenced blocks and inline code, where a link is only an example."""
    return re.sub(r"`[^`\n]*`", "", unfenced(text))


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    seen, found = {}, set()
    for line in unfenced(path.read_text()).splitlines():
        if heading := re.match(r"#{1,6}\s+(.*)", line):
            base = slug(heading.group(1))
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found


def test_every_page_is_there():
    assert all(page.is_file() for page in PAGES), [rel(p) for p in PAGES if not p.is_file()]
    assert len(PAGES) > 3


def test_the_readme_is_a_first_read():
    size = len(README.read_bytes())
    assert size <= 12 * 1024, f"README.md is {size:,} bytes; move detail into docs/"
    text = README.read_text()
    # A figure that needs a commit to stay true (a date, a suite's test count or time)
    # belongs in CONTRIBUTING.md or experiments/README.md, with its date.
    dated = re.findall(r"\b20\d\d-\d\d-\d\d\b|\b\d+ (?:tests|passed)\b|\d+ min \d+ s", text)
    assert dated == []


def test_the_test_command_is_the_one_ci_runs():
    assert TEST_COMMAND in README.read_text()
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_reaches_a_file_and_heading(page):
    text = prose(page.read_text())
    targets = LINK.findall(text) + IMG.findall(text)
    broken = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {rel(linked)}")
    assert broken == []


def command_lines():
    """(page, line number, command, arguments) of each ``python -m tfresnet.<command>`` in
    a bash block: continuation lines joined, comments dropped, and environment variables,
    ``srun ...`` or ``pip install ... &&`` before the command stepped over."""
    found = []
    for page in filter(lambda p: p.is_file(), PAGES):
        text = page.read_text()
        for block in FENCE.finditer(text):
            if block.group(1) not in ("bash", "sh", "shell", "console"):
                continue
            first = text[:block.start(2)].count("\n") + 1
            logical, start = "", None
            for number, line in enumerate(block.group(2).splitlines(), first):
                start = number if start is None else start
                if line.rstrip().endswith("\\"):
                    logical += line.rstrip()[:-1] + " "
                    continue
                logical += line
                found += commands_in(page, start, logical)
                logical, start = "", None
    return found


def commands_in(page, number, line):
    tokens = shlex.split(line, comments=True)
    found, segment = [], []
    for token in [*tokens, "&&"]:
        if token not in ("&&", "||", ";", "|"):
            segment.append(token)
            continue
        for i in range(len(segment) - 2):
            if (segment[i] in ("python", "python3") and segment[i + 1] == "-m"
                    and re.fullmatch(r"tfresnet\.\w+", segment[i + 2])):
                command = segment[i + 2].removeprefix("tfresnet.")
                found.append((rel(page), number, command, segment[i + 3:]))
                break
        segment = []
    return found


COMMAND_LINES = command_lines()


def parser_built_in_main(module, **names):
    """The parser that ``module.main`` builds before it parses, for a command without a
    ``build_parser()``: only main's statements that build it run (``parser = <...parser>(...)``,
    ``parser.add_...(...)`` and ``add_...(parser)``), in the module's namespace; main itself
    is never called."""
    function = ast.parse(textwrap.dedent(inspect.getsource(module.main))).body[0]
    kept = []
    for statement in function.body:
        code = ast.unparse(statement)
        if "parser.parse_args(" in code:  # built: what follows uses it
            break
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call):
            if ([ast.unparse(t) for t in statement.targets] == ["parser"]
                    and "parser" in ast.unparse(statement.value.func).lower()):
                kept.append(statement)
        elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
            call = statement.value
            on_parser = (isinstance(call.func, ast.Attribute)
                         and ast.unparse(call.func.value) == "parser"
                         and call.func.attr.startswith("add_"))
            given_parser = (isinstance(call.func, ast.Name) and call.func.id.startswith("add_")
                            and [ast.unparse(a) for a in call.args] == ["parser"])
            if on_parser or given_parser:
                kept.append(statement)
    namespace = {**vars(module), **names}
    exec(compile(ast.Module(kept, type_ignores=[]), module.__file__, "exec"), namespace)
    if "parser" not in namespace:
        pytest.fail(f"{module.__name__}.main builds no parser this test can find: give the "
                    "module a build_parser() that main calls")
    return namespace["parser"]


def parse(command, args):
    """``args`` through ``python -m tfresnet.<command>``'s parser, as its main parses them."""
    module = importlib.import_module(f"tfresnet.cli.{command}")
    if "-h" in args or "--help" in args:  # the parser builds; its help would exit
        return module.build_parser() if hasattr(module, "build_parser") else (
            parser_built_in_main(module))
    if command == "baselines":  # the method first, then its own flags (cnn: train's)
        method = module.build_parser().parse_args(args[:1]).method
        if method == "cnn":
            return parse("train", ["--model", "small_cnn", *args[1:]])
        return parser_built_in_main(module, method=method).parse_args(args[1:])
    if hasattr(module, "build_parser"):
        return module.build_parser().parse_args(args)
    return parser_built_in_main(module).parse_args(args)


def test_the_pages_show_commands():
    assert {command for _, _, command, _ in COMMAND_LINES} >= {"train", "tune", "export"}


@pytest.mark.parametrize("page,line,command,args", COMMAND_LINES,
                         ids=[f"{p}:{n}:{c}" for p, n, c, _ in COMMAND_LINES])
def test_every_documented_command_parses(page, line, command, args):
    from tfresnet.errors import UserError

    try:
        parse(command, args)
    except UserError as err:
        pytest.fail(f"{page}, line {line}: python -m tfresnet.{command} "
                    f"{shlex.join(args)}: {err}")
