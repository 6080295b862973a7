"""What the CLI-driven tests share: the flags of a tiny CPU training, a CliRunner call that lets
exceptions through, and the folder settings of a test's own data, runs and submissions."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from compkit.cli import cli


def fast(epochs: int = 1, batch_size: int = 64) -> list[str]:
    """train flags for a seconds-long run: a tiny timm ResNet on the CPU, no workers, no precise BN."""
    return ["--epochs", str(epochs), "--batch-size", str(batch_size), "--device", "cpu", "--quiet",
            "--set", "num_workers=0", "--set", "model=timm/resnet10t", "--set", "precise_bn=0"]


FAST = fast()


def invoke(*args: str, env: dict[str, str]):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def places_env(base: Path) -> dict[str, str]:
    """COMPKIT_DATA_DIR, COMPKIT_RUNS_DIR and COMPKIT_SUBMISSIONS_DIR under ``base`` (d, r, s)."""
    return {"COMPKIT_DATA_DIR": str(base / "d"), "COMPKIT_RUNS_DIR": str(base / "r"),
            "COMPKIT_SUBMISSIONS_DIR": str(base / "s")}
