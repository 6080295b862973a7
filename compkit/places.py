"""Where things live: data/NAME, runs/NAME/<run>, submissions/NAME, relative to the working directory.

Each is overridable by a CLI option and an environment variable (COMPKIT_DATA_DIR,
COMPKIT_RUNS_DIR, COMPKIT_SUBMISSIONS_DIR).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import time
from pathlib import Path

from compkit import _io
from compkit.errors import CompkitError

LATEST = "latest"
RUN_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclasses.dataclass(frozen=True)
class Places:
    """The three top folders; each competition gets a subfolder named after it."""

    data: Path = Path("data")
    runs: Path = Path("runs")
    submissions: Path = Path("submissions")

    @classmethod
    def from_env(cls, data: str | None = None, runs: str | None = None, submissions: str | None = None) -> Places:
        """Options first, then environment variables, then the defaults."""
        return cls(
            Path(data or os.environ.get("COMPKIT_DATA_DIR") or "data"),
            Path(runs or os.environ.get("COMPKIT_RUNS_DIR") or "runs"),
            Path(submissions or os.environ.get("COMPKIT_SUBMISSIONS_DIR") or "submissions"),
        )

    def data_root(self, name: str) -> Path:
        return self.data / name

    def run_dir(self, name: str, run: str) -> Path:
        return self.runs / name / check_run_name(run)

    def submission_dir(self, name: str) -> Path:
        return self.submissions / name


def check_run_name(run: str) -> str:
    """``run`` if it is a plain folder name (letters, digits, ``.``, ``_``, ``-``), else an error."""
    if not RUN_NAME.fullmatch(run) or run in (".", ".."):
        raise CompkitError(f"run name {run!r} is not allowed: use letters, digits, '.', '_' and '-' "
                           "(no slashes), so that the run stays inside the runs folder")
    return run


def new_run_id() -> str:
    """A timestamped run id, sortable by time."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def agreed_run_id(runs_root: Path, rank: int, world_size: int, timeout: float = 300.0) -> str:
    """A new run id that every torchrun process agrees on: rank 0 picks it, the others read it.

    Each process stamping its own clock could straddle a second and split one run in two.
    """
    if world_size <= 1:
        return new_run_id()
    marker = runs_root / f".run-{os.environ.get('TORCHELASTIC_RUN_ID', 'default')}"
    if rank == 0:
        run = new_run_id()
        runs_root.mkdir(parents=True, exist_ok=True)
        _io.write_text(marker, run)
        return run
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise CompkitError(f"rank {rank} waited {timeout:.0f}s for rank 0 to name the run ({marker})")
        time.sleep(0.1)
    return marker.read_text(encoding="utf-8").strip()


def point_latest(runs_root: Path, run: str) -> None:
    """Make ``runs/NAME/latest`` a symlink to ``run`` (replaced atomically)."""
    link = runs_root / LATEST
    temporary = runs_root / f".{LATEST}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    try:
        temporary.symlink_to(run, target_is_directory=True)
    except OSError:  # no symlinks (some Windows setups): a text file names the run instead
        temporary.write_text(run + "\n", encoding="utf-8")
    os.replace(temporary, link)


def resolve_run(runs_root: Path, run: str | None) -> str:
    """``run`` itself, or the run ``latest`` points at; errors say what exists."""
    if run and run != LATEST:
        check_run_name(run)
        if not (runs_root / run).is_dir():
            raise CompkitError(f"no run {run!r} in {runs_root}; runs: {', '.join(list_runs(runs_root)) or 'none'}")
        return run
    link = runs_root / LATEST
    if link.is_symlink():
        return os.readlink(link)
    if link.is_file():
        return link.read_text(encoding="utf-8").strip()
    raise CompkitError(f"no runs in {runs_root}; train one first with: compkit train {runs_root.name} --fold 0")


def list_runs(runs_root: Path) -> list[str]:
    if not runs_root.is_dir():
        return []
    return sorted(p.name for p in runs_root.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))  # .locks is no run
