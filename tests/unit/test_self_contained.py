"""The repository stands on its own: no tracked file may point at a path outside it.

A clone has nothing beside it, so a test that reads a sibling directory, a doc that links one, or a
docstring that cites a document the clone lacks breaks (or misleads) there. The scan covers every
tracked file (`git ls-files`), or every file under the root when this is not a git checkout (a copy
or an unpacked archive), so it works wherever the tests run.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS = PurePosixPath("tests/unit/test_self_contained.py")  # its own examples would match

# Directories a walk skips: build outputs, environments and caches, never part of the repository.
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache",
             ".lbtrain", "build", "dist", "test-artifacts", "demo-data", "node_modules", ".cloudstorage"}

# (pattern, why it points outside). Precise on purpose: "shared" in prose ("shared cores") matches none.
OUTSIDE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\.\./shared\b"), "a sibling `shared` directory"),
    (re.compile(r"(?<![\w.:/-])/work/"), "an absolute path on a development machine"),
    (re.compile(r"\bshared/(?:fixtures|hooks|DESIGN|[\w-]+\.md)\b"), "the `shared` directory's content"),
    (re.compile(r"\bDESIGN\b"), "the design document kept outside the repo (use docs/architecture.md)"),
]

# A markdown file named in any text: it must be one of the repository's own.
MD_NAME = re.compile(r"(?<![\w./:*-])((?:\.{1,2}/)*[\w-][\w./-]*\.md)\b")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why}: {self.text.strip()[:160]}"


def repo_files(root: Path) -> list[PurePosixPath]:
    """Tracked files plus untracked ones git does not ignore (deleted ones left out), or, without git,
    every file a walk finds outside SKIP_DIRS."""
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                 cwd=root, capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            pass
        else:
            names = [PurePosixPath(n) for n in out.decode().split("\0") if n]
            return [n for n in names if (root / n).is_file()]
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        dirs = rel.parts[:-1]
        if path.is_file() and not SKIP_DIRS.intersection(dirs) and not any(d.endswith(".egg-info") for d in dirs) \
                and not rel.name.endswith(".pyc"):
            found.append(PurePosixPath(rel.as_posix()))
    return sorted(found)


def md_resolves(name: str, where: PurePosixPath, files: set[PurePosixPath], basenames: set[str]) -> bool:
    """A markdown name is the repository's own if it is a path from the root or from the naming
    file's directory, or a bare name some file in the repository has."""
    candidates = [PurePosixPath(name), where.parent / name]
    if any(_normalize(c) in files for c in candidates):
        return True
    return "/" not in name and name in basenames


def _normalize(path: PurePosixPath) -> PurePosixPath | None:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return None  # above the root: outside by definition
            parts.pop()
        elif part != ".":
            parts.append(part)
    return PurePosixPath(*parts) if parts else None


def scan_text(text: str, where: PurePosixPath, files: set[PurePosixPath]) -> Iterator[Finding]:
    basenames = {f.name for f in files}
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, why in OUTSIDE:
            if pattern.search(line):
                yield Finding(str(where), number, line, why)
        for m in MD_NAME.finditer(line):
            if not md_resolves(m.group(1), where, files, basenames):
                yield Finding(str(where), number, line, f"`{m.group(1)}` is not a file of this repository")


def scan(root: Path) -> list[Finding]:
    names = repo_files(root)
    files = set(names)
    findings = []
    for name in names:
        if name == THIS:
            continue
        data = (root / name).read_bytes()
        if b"\0" in data:
            continue  # binary
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        findings.extend(scan_text(text, name, files))
    return findings


def test_nothing_in_the_repository_points_outside_it() -> None:
    findings = scan(ROOT)
    assert not findings, "references outside the repository:\n" + "\n".join(map(str, findings))


def test_the_scan_sees_the_repository() -> None:
    """A scan that lists nothing would pass vacuously."""
    names = set(repo_files(ROOT))
    assert {PurePosixPath("README.md"), PurePosixPath("lbtrain/config.py"), THIS} <= names
    assert not any(part in SKIP_DIRS for n in names for part in n.parts[:-1])


# The references the scan must catch, assembled here so this file itself names no path outside the repo.
SHARED = "sha" + "red"  # the sibling directory's name, split so this file names no path outside the repo
SIBLING = "../" + SHARED
WORK = "/" + "work"


def test_the_walk_finds_the_same_files_without_git(tmp_path: Path) -> None:
    """A copy without .git (an archive, a CI copy) is scanned too, build outputs left out."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "b.py").write_text(f"y = '{SIBLING}/x'\n")
    (tmp_path / "lbtrain.egg-info").mkdir()
    (tmp_path / "lbtrain.egg-info" / "PKG-INFO").write_text(f"see {SIBLING}/x\n")
    (tmp_path / "README.md").write_text(f"see {SIBLING}/DESIGN.md\n")
    assert repo_files(tmp_path) == [PurePosixPath("README.md"), PurePosixPath("pkg/a.py")]
    assert {f.path for f in scan(tmp_path)} == {"README.md"}


FILES = {PurePosixPath(p) for p in ("README.md", "docs/architecture.md", "bench/README.md", "tests/data/x.json")}


@pytest.mark.parametrize("line", [
    f"[`{SIBLING}/DESIGN.md`]({SIBLING}/DESIGN.md) (kept beside this repo).",
    f'FIXTURES = Path("{WORK}/{SHARED}/fixtures/labelbox")',
    f"(d / '{SHARED}' / 'fixtures') or {SHARED}/fixtures/vertex",
    f"see `{SHARED}/wire-testing.md`",
    "(DESIGN §4)",
    "## Where the code adds to DESIGN.md",
    "Export v2 rows (see labelbox-formats.md)",
    "from public data that installs offline (datasets.md)",
    "see ../../README.md",
])
def test_outside_references_are_found(line: str) -> None:
    assert list(scan_text(line, PurePosixPath("lbtrain/x.py"), FILES))


@pytest.mark.parametrize("line", [
    "Process set-up shared by the services' main.py",
    "2 shared cores: a poll may take a few seconds",
    "Multi-label pieces shared by text and image tasks",
    "datasets.build(MT, str(tmp_path), '../escape')",
    "docs/architecture.md §4 and bench/README.md",
    "COPY README.md pyproject.toml ./",
    "see ../README.md",
    "https://github.com/Labelbox/labelbox-python/blob/develop/README.md",
    "gs://bucket/work/x and http://host/work/y",
    "tests/data/*.md are notes",
    "design choices, designed, redesign",
])
def test_prose_and_own_files_are_not_flagged(line: str) -> None:
    assert not list(scan_text(line, PurePosixPath("bench/x.py"), FILES))
