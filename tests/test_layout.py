"""The layout by area holds: imports run downward only (docs/architecture.md, "Layout").

Every module of ``firmware/``, ``web/`` and ``dsp/`` is parsed (not imported) and each import it
makes, at the top or inside a function, relative or absolute, is resolved to the folder it
reaches. A module may import from its own folder and from any row below it; never upward, never
sideways between the folders of one row.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# folder -> row; folders on one row may not import each other
ROWS = {
    "firmware.cli": 5,
    "web": 4,
    "firmware.recording": 3, "firmware.release": 3,
    "firmware.vault": 2, "firmware.people": 2,
    "ground": 1,
    "dsp": 0,
}
AREAS = ("firmware.cli", "firmware.recording", "firmware.release", "firmware.vault", "firmware.people")
PACKAGES = ("firmware", "web", "dsp")


def folder_of(module: str) -> str | None:
    """The layout folder a dotted module name belongs to, or None for a module outside the project."""
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if top != "firmware":
        return top
    for area in AREAS:
        if module == area or module.startswith(area + "."):
            return area
    return "ground"


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def imports_of(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, submodules named by ``from X import y`` included."""
    name, is_pkg = module_name(root, path)
    package = name if is_pkg else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((node.lineno, target))
            # ``from . import vault`` names a module; ``from .x import y`` may too: resolve both
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names
                      if _is_module(root, f"{target}.{a.name}")]
    return found


def _is_module(root: Path, dotted: str) -> bool:
    p = root.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def violations(root: Path) -> list[str]:
    bad = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            src_name, _ = module_name(root, path)
            src = folder_of(src_name)
            seen = set()
            for line, target in imports_of(root, path):
                dst = folder_of(target)
                if dst is None or dst == src or (line, dst) in seen:
                    continue
                seen.add((line, dst))
                if ROWS[dst] >= ROWS[src]:
                    way = "sideways" if ROWS[dst] == ROWS[src] else "upward"
                    bad.append(f"{path.relative_to(root)}:{line}: {src} imports {target} ({dst}, {way})")
    return bad


def test_every_import_runs_downward():
    assert violations(ROOT) == []


def test_every_module_has_a_folder_on_the_map():
    """A new folder under firmware/ must be placed on a row before it can hold code."""
    for path in (ROOT / "firmware").iterdir():
        if path.is_dir() and (path / "__init__.py").is_file():
            name = f"firmware.{path.name}"
            assert name in AREAS or path.name in ("hal", "data"), f"{name} is not on the layout map"


def _write(root: Path, rel: str, text: str = "") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("rel, text, expect", [
    ("firmware/recording/x.py", "from ..release import calllist\n", "firmware.recording imports firmware.release"),
    ("firmware/release/x.py", "from firmware.recording.ring import LineRings\n", "sideways"),
    ("firmware/vault/x.py", "def f():\n    from ..recording import pipeline\n", "upward"),
    ("firmware/vault/x.py", "from ..people.accounts import can\n", "sideways"),
    ("firmware/people/x.py", "from firmware.vault import keys\n", "sideways"),
    ("firmware/index.py", "from .vault.age import AgeWriter\n", "ground imports firmware.vault.age"),
    ("firmware/hal/x.py", "from ..recording.ring import LineRings\n", "upward"),
    ("dsp/x.py", "import firmware.config\n", "dsp imports firmware.config"),
    ("firmware/recording/x.py", "from web import serve\n", "upward"),
    ("web/x.py", "from firmware.cli import main\n", "upward"),
])
def test_the_check_catches_an_import_against_the_rule(tmp_path, rel, text, expect):
    for d in ("firmware", "firmware/recording", "firmware/release", "firmware/vault", "firmware/people",
              "firmware/cli", "firmware/hal", "web", "dsp"):
        _write(tmp_path, f"{d}/__init__.py")
    for m in ("firmware/release/calllist.py", "firmware/recording/ring.py", "firmware/recording/pipeline.py",
              "firmware/people/accounts.py", "firmware/vault/keys.py", "firmware/vault/age.py", "firmware/config.py",
              "firmware/cli/main.py"):
        _write(tmp_path, m)
    assert violations(tmp_path) == []
    _write(tmp_path, rel, text)
    found = violations(tmp_path)
    assert len(found) == 1 and expect in found[0], found


def test_downward_imports_pass_the_check(tmp_path):
    for d in ("firmware", "firmware/recording", "firmware/vault", "firmware/cli", "firmware/hal", "web", "dsp"):
        _write(tmp_path, f"{d}/__init__.py")
    _write(tmp_path, "firmware/vault/keys.py", "from ..index import connect\nfrom ..hal import clock\n")
    _write(tmp_path, "firmware/recording/x.py", "from ..vault.keys import f\nfrom . import y\nimport dsp.segment\n")
    _write(tmp_path, "firmware/cli/main.py", "from web import serve\nfrom ..recording import x\n")
    _write(tmp_path, "web/a.py", "from firmware.recording import x\n")
    _write(tmp_path, "firmware/hal/audio.py", "from dsp.synth import LineTraffic\n")
    assert violations(tmp_path) == []


@pytest.mark.slow
def test_the_wheel_carries_every_package_and_its_data(tmp_path):
    """The built wheel holds every folder of the layout, the templates, static files, notice WAVs and
    the password list, and its console script is ``nokbox``."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("nokbox-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert sources - names == set()
    for rel in ("web/templates/base.html", "web/templates/calls.html", "web/static/nokbox.css",
                "web/static/status.js", "firmware/data/notice_default.wav", "firmware/data/notice_beep.wav",
                "firmware/data/common-passwords.txt"):
        assert rel in names
    templates = {p.name for p in (ROOT / "web/templates").glob("*.html")}
    assert templates == {n.rsplit("/", 1)[1] for n in names if n.startswith("web/templates/") and n.endswith(".html")}
    (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry = zipfile.ZipFile(wheel).read(ep).decode()
    assert "nokbox = firmware.cli:main" in entry
