"""Each image's environment as its Dockerfile builds it, without a Docker engine.

A Dockerfile is read for what matters to the code inside it: the files it COPYs into WORKDIR, the
`pip install` commands it RUNs, its ENV and its command. `build()` makes a virtualenv with exactly those
installs (no --system-site-packages: a package the image lacks is missing here too) and `stage()` lays out
the COPYed files as /app is laid out, so the piece runs from its image's files with its image's packages.

Differences from a real image, on purpose: `--index-url` / `--extra-index-url` are dropped (the package
registries named there are not reachable here; the pinned versions are the same), and the code is imported
from the staged copy (PYTHONPATH) rather than from the copy pip put in site-packages, so a cached
environment never runs stale code. Environments are cached by the hash of their install commands and
pyproject.toml under LBTRAIN_IMAGE_ENV_CACHE (default ~/.cache/lbtrain/image-envs).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DROPPED_PIP_OPTIONS = ("--index-url", "-i", "--extra-index-url")
# An environment no test has used for this long is deleted (each pyproject change makes new ones: GBs).
STALE_AFTER_SECONDS = 14 * 24 * 3600


@dataclass(frozen=True)
class ImageSpec:
    dockerfile: str
    base: str
    workdir: str
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    pip_installs: list[list[str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.dockerfile.replace("/", "_").replace(".", "_")

    def command(self) -> list[str]:
        """ENTRYPOINT + CMD as the container runs them (shell form through `sh -c`)."""
        return [*self.entrypoint, *self.cmd]

    def requirements(self) -> set[str]:
        """Every requirement the installs name (`.[a,b]` kept as written)."""
        out = set()
        for args in self.pip_installs:
            out |= {a for a in pip_args(args) if not a.startswith("-")}
        return out

    def extras(self) -> set[str]:
        """The project's extras installed (`.[services,gcs]` → {services, gcs})."""
        out: set[str] = set()
        for req in self.requirements():
            if req.startswith(".[") and req.endswith("]"):
                out |= {e.strip() for e in req[2:-1].split(",")}
        return out


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def _exec_or_shell(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        return list(json.loads(value))
    return ["sh", "-c", value]


def parse(dockerfile: str) -> ImageSpec:
    """The parts of a Dockerfile that decide what runs (relative to the repository root)."""
    text = (ROOT / dockerfile).read_text()
    base, workdir = "", "/"
    copies: list[tuple[list[str], str]] = []
    installs: list[list[str]] = []
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    for line in _logical_lines(text):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            base = rest.split()[0]
        elif instruction == "WORKDIR":
            workdir = rest.strip()
        elif instruction == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        elif instruction == "COPY":
            parts = rest.split()
            copies.append((parts[:-1], parts[-1]))
        elif instruction == "RUN":
            for command in rest.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    installs.append(words[2:])
                elif words[:4] == ["python", "-m", "pip", "install"]:
                    installs.append(words[4:])
        elif instruction == "ENTRYPOINT":
            entrypoint = _exec_or_shell(rest)
        elif instruction == "CMD":
            cmd = _exec_or_shell(rest)
    return ImageSpec(dockerfile, base, workdir, copies, installs, env, entrypoint, cmd)


def pip_args(args: list[str]) -> list[str]:
    """A Dockerfile's `pip install` arguments as run here: index options dropped (see the module doc)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in DROPPED_PIP_OPTIONS:
            skip = True
            continue
        if any(arg.startswith(opt + "=") for opt in DROPPED_PIP_OPTIONS if opt.startswith("--")):
            continue
        out.append(arg)
    return out


def stage(spec: ImageSpec, into: Path) -> Path:
    """The image's WORKDIR as its COPY lines fill it (Docker's rules: a directory's contents go into the
    destination; a file goes into a destination ending in `/`, else becomes it)."""
    into.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sources, dest in spec.copies:
        target = (into / dest).resolve()
        into_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
        for src in sources:
            path = ROOT / src
            if path.is_dir():
                shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
            else:
                dest_file = target / path.name if into_dir else target
                dest_file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest_file)
    return into


def cache_root() -> Path:
    return Path(os.environ.get("LBTRAIN_IMAGE_ENV_CACHE") or Path.home() / ".cache" / "lbtrain" / "image-envs")


def env_key(spec: ImageSpec) -> str:
    material = json.dumps({"installs": [pip_args(a) for a in spec.pip_installs],
                           "pyproject": (ROOT / "pyproject.toml").read_text(),
                           "python": sys.version}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ImageEnv:
    spec: ImageSpec
    venv: Path
    app: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def environ(self, **extra: str) -> dict[str, str]:
        """The container's environment: its ENV, the venv first on PATH, the staged app importable."""
        env = {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
               "VIRTUAL_ENV": str(self.venv), "PYTHONPATH": str(self.app), "LANG": "C.UTF-8",
               "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
        env.update(self.spec.env)
        env.update(extra)
        return env

    def command(self) -> list[str]:
        """The image's command with `python`/console scripts resolved in the venv."""
        out = []
        for word in self.spec.command():
            candidate = self.venv / "bin" / word
            out.append(str(candidate) if "/" not in word and candidate.exists() else word)
        return out

    def run(self, args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(args, cwd=self.app, env=self.environ(**(env or {})), capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result

    def popen(self, args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as fh:
            return subprocess.Popen(args, cwd=self.app, env=self.environ(**env), stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def build(dockerfile: str, app_dir: Path) -> ImageEnv:
    """The image's environment (cached) and a fresh staged copy of its files under `app_dir`."""
    spec = parse(dockerfile)
    if not spec.pip_installs:
        raise ValueError(f"{dockerfile}: no `pip install` found")
    venv = cache_root() / f"env-{env_key(spec)}"  # images with the same installs share one
    venv.parent.mkdir(parents=True, exist_ok=True)
    app = stage(spec, app_dir)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per environment, whichever test process gets here first
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            _create(spec, venv, app)
        (venv / ".last_used").touch()
    prune(venv.parent, keep=venv)
    return ImageEnv(spec, venv, app)


def prune(root: Path, keep: Path, now: float | None = None) -> list[Path]:
    """Delete cached environments unused for STALE_AFTER_SECONDS (never `keep`, never one being built)."""
    now = time.time() if now is None else now
    removed = []
    for env in root.glob("env-*"):
        marker = env / ".last_used"
        if env == keep or not marker.exists() or now - marker.stat().st_mtime < STALE_AFTER_SECONDS:
            continue
        with open(root / f".{env.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use by another test process
            shutil.rmtree(env, ignore_errors=True)
            removed.append(env)
    return removed


def _create(spec: ImageSpec, venv: Path, app: Path) -> None:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in spec.pip_installs:
        for _ in range(2):  # once more on failure: a registry hiccup is not a missing package
            result = subprocess.run([*pip, *pip_args(args)], cwd=app, capture_output=True, text=True, timeout=1800,
                                    env={**os.environ, "PIP_NO_CACHE_DIR": "0", "PYTHONPATH": ""})
            if result.returncode == 0:
                break
        else:
            noise = "WARNING: Location"
            err = "\n".join(line for line in result.stderr.splitlines() if noise not in line)
            raise RuntimeError(f"{spec.dockerfile}: pip install {' '.join(args)} failed:\n{err[-4000:]}")
    (venv / ".complete").write_text(json.dumps({"dockerfile": spec.dockerfile,
                                                "seconds": round(time.monotonic() - started, 1)}))


def project_dependencies(extra: str = "") -> list[str]:
    """pyproject's dependencies, or one extra's."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"][extra] if extra else project["dependencies"])
