"""The documentation is checked like code.

- Every name in a subpackage face's ``__all__`` has a docstring, as the docs site renders
  it (Griffe with the site's own extension, ``docs/hooks/sphinx_roles.py``, which also
  reads ``#:`` comments above constants), and the API reference renders every one.
- **Runnable blocks.** A shell block in ``README.md`` or ``docs/`` whose fence is preceded
  by the line ``<!-- runnable -->`` is run by this file, in a fresh directory, with
  ``bash -e`` and the checkout's ``optical-ray`` on ``PATH``; it must exit 0. Tag only
  cheap, self-contained commands (seconds each). The directory holds exactly one thing: a
  small catalog at ``optical_runs/demo/storage`` shaped like the demo's (pairs ``en-xa``
  and ``en-xc``, three trials each, with English metrics, retention and cost), so ``best``
  and ``report`` blocks run against it.
- Every ``optical-ray`` command in any ``bash`` block, tagged or not, parses with the real
  argument parser: a renamed or removed flag fails here. A command holding ``...`` is an
  elided example and is skipped; ``<lang>``-style placeholders are read as plain words.
- The README stays a landing page: at most 250 lines, the two commands first, verbatim,
  and every relative link pointing at a file.

``mkdocs build --strict`` itself (broken links and anchors, unresolved references, pages
left out of the nav) runs in ``scripts/test.sh``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
SUBPACKAGES = [
    "catalog",
    "cli",
    "cluster",
    "config",
    "data",
    "distributed",
    "evaluation",
    "models",
    "report",
    "studies",
    "sweeps",
    "tracking",
    "training",
]
MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w*)\s*$")
TWO_COMMANDS = """```bash
bash scripts/demo.sh     # install into .venv and run the main job: a real OPTICAL sweep on the embedded default
bash scripts/test.sh     # install into .venv and run the whole test suite (what CI runs)
```"""


def _blocks(path: Path) -> list[tuple[int, str, bool, str]]:
    """Every fenced block of ``path``: (line, language, tagged runnable, text)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        tagged = i > 0 and lines[i - 1].strip() == MARKER
        start, i = i, i + 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        out.append((start + 1, m.group(1), tagged, "\n".join(lines[start + 1 : i])))
        i += 1
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


RUNNABLE = [
    pytest.param(text, id=f"{_rel(p)}:{line}")
    for p in PAGES
    for line, lang, tagged, text in _blocks(p)
    if tagged
]


# --------------------------------------------------------------------------- docstrings


def _roles_extension():
    """The docs site's Griffe extension (``docs/hooks/sphinx_roles.py``, not a package)."""
    spec = importlib.util.spec_from_file_location("sphinx_roles", DOCS / "hooks/sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SphinxRoles()


@pytest.fixture(scope="module")
def griffe_package():
    """``optical_ray`` as the docs site sees it: loaded statically (no torch, no Ray), with
    the site's Griffe extension applied."""
    import griffe

    return griffe.load(
        "optical_ray",
        search_paths=[str(ROOT)],
        extensions=griffe.load_extensions(_roles_extension()),
    )


def _face_objects(pkg, sub: str) -> dict[str, object]:
    """Each name of ``optical_ray.<sub>.__all__`` -> the Griffe object that defines it
    (an eager face's import followed to its target; a lazy face's name found in the
    submodule that defines it)."""
    face = importlib.import_module(f"optical_ray.{sub}")  # faces are light: no torch, no Ray
    gsub = pkg[sub]
    out = {}
    for name in face.__all__:
        found = gsub.members.get(name)
        if found is None:
            found = next(
                (
                    m.members[name]
                    for m in gsub.modules.values()
                    if name in m.members and not m.members[name].is_alias
                ),
                None,
            )
        out[name] = found.final_target if found is not None and found.is_alias else found
    return out


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_every_face_name_has_a_docstring(griffe_package, sub: str) -> None:
    objects = _face_objects(griffe_package, sub)
    assert [n for n, o in objects.items() if o is None] == []  # every name found statically
    undocumented = [
        f"{n} ({o.path})"
        for n, o in objects.items()
        if o.docstring is None or not o.docstring.value.strip()
    ]
    assert undocumented == []


def _rendered_paths() -> set[str]:
    """The objects the API reference renders: each ``::: module`` block's ``members``
    list, or every name in the module's ``__all__`` when the block lists none."""
    rendered = set()
    for page in sorted((DOCS / "reference").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^::: (\S+)\n((?:    .*\n)*)", text, re.M):
            module, options = m.group(1), m.group(2)
            if re.search(r"^\s+members: false\s*$", options, re.M):
                continue
            names = re.findall(r"^\s+- (\w+)\s*$", options, re.M)
            if not names:
                names = list(importlib.import_module(module).__all__)
            rendered |= {f"{module}.{n}" for n in names}
    return rendered


def test_the_api_reference_renders_every_face_name(griffe_package) -> None:
    rendered = _rendered_paths()
    missing = [
        f"optical_ray.{sub}.{name} ({obj.path})"
        for sub in SUBPACKAGES
        for name, obj in _face_objects(griffe_package, sub).items()
        if obj.path not in rendered
    ]
    assert missing == []


def test_the_docstring_check_sees_a_missing_docstring() -> None:
    """The check itself: a public constant with no docstring and no ``#:`` comment is
    reported as undocumented, one with a ``#:`` comment is not."""
    import griffe

    code = 'A = 1\n#: What B is.\nB = 2\n__all__ = ["A", "B"]\n'
    lines = griffe.LinesCollection()
    lines[Path("m.py")] = code.splitlines()
    module = griffe.visit("m", filepath=Path("m.py"), code=code, lines_collection=lines)
    _roles_extension().on_package(pkg=module)
    assert module["A"].docstring is None
    assert module["B"].docstring.value == "What B is."


# --------------------------------------------------------------------------- runnable blocks


@pytest.fixture(scope="module")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a catalog shaped like the demo's at ``optical_runs/demo/storage``."""
    from optical_ray.catalog import Catalog, TrialRecord

    root = tmp_path_factory.mktemp("docs_catalog")
    trials = {  # map, English map, retention, device-s, epsilon, layers
        "en-xa": [(0.61, 0.50, 0.99, 40.0, 0.05, [-1]), (0.58, 0.51, 1.0, 30.0, 0.02, [-2, -1])],
        "en-xc": [(0.43, 0.48, 0.95, 45.0, 0.05, [-1]), (0.41, 0.50, 0.99, 35.0, 0.02, [-2, -1])],
    }
    records = []
    for pair, rows in trials.items():
        rows.append((rows[-1][0] - 0.03, 0.51, 1.0, 25.0, 0.2, [-1]))
        for i, (value, english, retention, device_s, eps, layers) in enumerate(rows):
            config = {
                "pair": pair,
                "distill.method": "ot",
                "distill.epsilon": eps,
                "distill.layers": layers,
                "distill.lr": 1e-3,
                "distill.l2sp": 0.01 * i,
            }
            records.append(
                TrialRecord(
                    experiment=f"demo-{pair}",
                    pair=pair,
                    trial_id=f"{pair}-{i}",
                    config=config,
                    best_metrics={"map": value, f"{pair}/map": value, "en-en/map": english},
                    baseline_metrics={"map": value - 0.2, f"{pair}/map": value - 0.2},
                    retention=retention,
                    device_s=device_s,
                    training_s=device_s,
                    eval_s=1.0,
                    iterations=4,
                    origin="random",
                    finished_at=1_700_000_000 + i,
                )
            )
    Catalog(str(root / "optical_runs/demo/storage")).extend(records)
    return root


def test_runnable_blocks_are_tagged_in_the_readme_and_the_docs() -> None:
    """The tag finds blocks in both places, and never sits above anything but a bash
    block (a tag above prose or a YAML block would silently run nothing)."""
    tagged = {p: [b for b in _blocks(p) if b[2]] for p in PAGES}
    assert tagged[README] and sum(len(b) for p, b in tagged.items() if p != README) >= 8
    misplaced = []
    for p in PAGES:
        lines = p.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() == MARKER and (i + 1 >= len(lines) or lines[i + 1] != "```bash"):
                misplaced.append(f"{_rel(p)}:{i + 1}")
    assert misplaced == []


@pytest.mark.slow  # a CLI process per command: seconds each, a minute in all
@pytest.mark.parametrize("script", RUNNABLE)
def test_runnable_block_runs(script: str, demo_catalog: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(demo_catalog, work)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whatever the venv points at
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"{script}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}"
    )


# --------------------------------------------------------------------------- commands parse


def _commands(text: str) -> list[list[str]]:
    """The ``optical-ray`` commands of a shell block, as argument lists (``optical-ray``
    dropped), continuation lines joined, cut at the shell's operators."""
    text = text.replace("\\\n", " ")
    text = re.sub(r"<([A-Za-z_][\w-]*)>", r"\1", text)  # <lang> placeholders
    out = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|<>()"):
                # the command itself, or what a launcher runs after `--` (ray job submit)
                starts = [i for i, w in enumerate(command) if w == "optical-ray"]
                starts = [i for i in starts if i == 0 or command[i - 1] == "--"]
                if starts and "..." not in command[starts[0] + 1 :]:
                    out.append(command[starts[0] + 1 :])
                command = []
            else:
                command.append(token)
    return out


DOCUMENTED = [
    pytest.param(args, id=f"{_rel(p)}:{line}:{' '.join(args[:2])}")
    for p in PAGES
    for line, lang, _, text in _blocks(p)
    if lang == "bash"
    for args in _commands(text)
]


def test_commands_are_found() -> None:
    """The extraction itself: continuations, operators, placeholders and elisions."""
    block = (
        "optical-ray best --pair en-xc --where 'retention>=0.98' > best.yaml && optical-ray \\\n"
        "  config --config best.yaml   # a comment\n"
        "ray job submit -- optical-ray sweep --pairs <lang>-en --space s.yaml\n"
        "optical-ray sweep ... --resume\n"
        "kubectl get secret optical-ray -o name\n"
    )
    assert _commands(block) == [
        ["best", "--pair", "en-xc", "--where", "retention>=0.98"],
        ["config", "--config", "best.yaml"],
        ["sweep", "--pairs", "lang-en", "--space", "s.yaml"],
    ]
    assert len(DOCUMENTED) >= 40


@pytest.mark.parametrize("args", DOCUMENTED)
def test_documented_command_parses(args: list[str], capsys: pytest.CaptureFixture) -> None:
    from optical_ray.cli.parser import build_parser

    try:
        _, unknown = build_parser().parse_known_args(args)
    except SystemExit as exc:  # argparse's way of saying no (or, with code 0, --help)
        if exc.code == 0:
            return
        pytest.fail(f"optical-ray {shlex.join(args)}: {capsys.readouterr().err.strip()} ({exc})")
    assert [a for a in unknown if a.startswith("-")] == []


# --------------------------------------------------------------------------- the README


def test_the_readme_is_a_landing_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    first_block = text[text.index("```") :].split("```\n", 1)[0] + "```"
    assert first_block == TWO_COMMANDS
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [link for link in links if "://" not in link]
    assert relative and [link for link in relative if not (ROOT / link).exists()] == []
