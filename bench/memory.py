"""Benchmark: peak memory of submit's two big steps against the size of their input.

1. **Test set.** ``submit`` on the SIIM demo (real layout, real RLE/upscale writer) with 5 folds of
   a U-Net at 512 px, at 1x and 4x the test images. Streaming (every fold predicts each batch, rows
   are made a batch at a time) is measured beside the whole-array path it replaced (each fold's
   probabilities for the whole test set, averaged, post-processed, then turned into rows), which
   ``pipeline._predict.predict`` still gives.
2. **Out-of-fold predictions.** The CV over 5 folds and the post-processing search on SIIM-like OOF
   files at 512 px, at 1x and 4x the images.

Each measurement runs in a fresh process; its peak RSS (VmHWM) is read against the RSS it had
once imports and models were loaded ("base"), so "added" is what the step itself cost. Prints a
table last; the goal is added(4x) / added(1x) near 1 (peak(4x) / peak(1x) <= 1.2 and 1.3).

    python bench/memory.py --quick     # 256 px, small counts
    python bench/memory.py             # 512 px as in the issue
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MIB = 1 << 20


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    """Resident set size now, from /proc (Linux)."""
    return _status("VmRSS")


def peak_mib() -> float:
    """This process's peak resident set size (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    fork and exec, so a child started by a parent that had just written 1 GB of OOF reported the parent's
    peak as its own."""
    return _status("VmHWM")


# -- the child processes -------------------------------------------------------------------------------


def child_submit(work: Path, streaming: bool) -> dict:
    from compkit import postprocess, registry
    from compkit.config import Config
    from compkit.pipeline import _predict, submitting, table

    comp = registry.get().competition("siim")
    run_dir, root = work / "runs" / "siim" / "r", work / "data" / "siim"
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    test_table = table(comp, root, "test")
    params = {"threshold": 0.5, "min_area": 0}
    models = [f"fold{k}" for k in range(5)]
    # warm: models loaded, the test cache built, one batch through (allocator pools filled)
    next(iter(_predict.predict_batches(comp, config, root, run_dir, models, test_table.head(8), "none", "cpu", 8)))
    base = rss_mib()
    if streaming:
        frame = submitting.submission_rows(comp, config, root, run_dir, models, test_table, "none", "cpu", 8, params)
    else:
        total = None
        for name in models:  # the path submit took before: each fold over the whole test set
            probabilities = _predict.predict(comp, config, root, run_dir, [name], test_table, "none", "cpu", 8)
            total = probabilities if total is None else total + probabilities
        frame = comp.submission(test_table, postprocess.apply(total / len(models), params))
    assert len(frame) >= len(test_table)
    return {"base": base, "peak": peak_mib()}


def child_oof(work: Path) -> dict:
    from compkit import registry
    from compkit.config import Config
    from compkit.pipeline import submitting

    comp = registry.get().competition("siim")
    run_dir = work / "oof"
    base = rss_mib()
    cv = submitting.cross_validation(comp, run_dir, list(range(5)))
    params = submitting._postprocess(comp, Config(), run_dir, cv)
    return {"base": base, "peak": peak_mib(), "cv": cv["score"], "params": params}


# -- set-up in the parent ----------------------------------------------------------------------------------


def write_siim(work: Path, test_images: int, size: int) -> None:
    """The SIIM demo with ``test_images`` test DICOMs and a 5-fold run of untrained U-Nets at ``size``."""
    import torch

    import compkit_siim.demo as demo
    from compkit import registry

    comp = registry.get().competition("siim")
    demo.TRAIN_IMAGES, demo.TEST_IMAGES = 10, test_images
    root = work / "data" / "siim"
    comp.make_demo(root, seed=0)
    (root / ".demo").touch()
    run_dir = work / "runs" / "siim" / "r"
    config = comp.defaults.replace(model="unet/resnet18", pretrained=False, image_size=size, batch_size=8,
                                   num_workers=0, device="cpu", tta="none")
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(config.to_json())
    for k in range(5):
        torch.manual_seed(k)
        model = registry.get().model(config.model, comp.num_classes, comp.in_channels, pretrained=False)
        (run_dir / f"fold{k}").mkdir()
        torch.save({"format": 1, "model": model.state_dict(), "ema": None, "epoch": 1},
                   run_dir / f"fold{k}" / "best.pt")


def write_oof(work: Path, images: int, size: int) -> int:
    """5 folds of SIIM-like OOF files (blobs in a fifth of the images, noisy probabilities); their bytes."""
    from compkit import oof

    rng = np.random.default_rng(0)
    folder = work / "oof"
    total = 0
    for k in range(5):
        count = images // 5
        masks = np.zeros((count, size, size), np.uint8)
        yy, xx = np.mgrid[:size, :size]
        for i in range(0, count, 5):
            cy, cx, r = rng.integers(size // 4, 3 * size // 4), rng.integers(size // 4, 3 * size // 4), size // 10
            masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        noise = rng.random((count, size, size), dtype=np.float32)
        probabilities = np.clip(0.6 * masks + 0.45 * noise ** 4, 0, 1)
        (folder / f"fold{k}").mkdir(parents=True)
        oof.write(folder / f"fold{k}" / "oof.npz", [f"{k}-{i}" for i in range(count)], probabilities, masks, epoch=1)
        total += (folder / f"fold{k}" / "oof.npz").stat().st_size
        del masks, noise, probabilities
    return total


def measure(kind: str, work: Path, *extra: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(work), *extra], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("submit", "oof"), help="measure one of the two steps")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, work = args.child[0], Path(args.child[1])
        result = child_oof(work) if kind == "oof" else child_submit(work, streaming=kind == "stream")
        print(json.dumps(result, default=float))
        return
    size, tests, oofs = (256, 12, 250) if args.quick else (512, 24, 500)
    rows = []
    for scale in (1, 4):
        if args.only != "oof":
            with tempfile.TemporaryDirectory() as folder:
                work = Path(folder)
                write_siim(work, tests * scale, size)
                for kind in ("stream", "whole"):
                    result = measure(kind, work)
                    rows.append((f"submit, {kind}", f"{tests * scale} test images", scale, result))
                    print(f"{rows[-1][0]:<16} {rows[-1][1]:<18} peak {result['peak']:8.0f} MiB  "
                          f"added {result['peak'] - result['base']:7.0f} MiB", flush=True)
        if args.only != "submit":
            with tempfile.TemporaryDirectory() as folder:
                work = Path(folder)
                nbytes = write_oof(work, oofs * scale, size)
                result = measure("oof", work)
                rows.append(("CV + search", f"{oofs * scale} OOF images", scale, result))
                pixels = oofs * scale * size * size
                print(f"{'CV + search':<16} {oofs * scale} OOF images  {nbytes / pixels:.2f} bytes/pixel on disk  "
                      f"peak {result['peak']:8.0f} MiB  added {result['peak'] - result['base']:7.0f} MiB  "
                      f"(chose {result['params']})", flush=True)

    print(f"\nPeak memory against input size at {size} px (MiB; added = peak - RSS after imports and models)")
    print(f"{'step':<16} {'1x peak':>8} {'4x peak':>8} {'ratio':>6} {'1x added':>9} {'4x added':>9} {'ratio':>6}")
    for name in ("submit, stream", "submit, whole", "CV + search"):
        if not any(r[0] == name for r in rows):
            continue
        one, four = (next(r[3] for r in rows if r[0] == name and r[2] == s) for s in (1, 4))
        added = [r["peak"] - r["base"] for r in (one, four)]
        print(f"{name:<16} {one['peak']:8.0f} {four['peak']:8.0f} {four['peak'] / one['peak']:6.2f} "
              f"{added[0]:9.0f} {added[1]:9.0f} {added[1] / max(added[0], 1):6.2f}")
    print("goal: peak ratio <= 1.2 (submit) and <= 1.3 (CV + search)")


if __name__ == "__main__":
    main()
