"""submit reads the test set once, predicts each batch with every fold and writes the rows a batch at a
time; what it writes is what averaging each fold's own full prediction gives."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from compkit import registry, tta
from compkit.cli import cli
from compkit.config import Config
from compkit.pipeline import _build, _predict, submitting, table
from tests._cli import FAST, invoke, places_env


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("stream")
    env = places_env(tmp_path)
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    assert invoke("folds", "digits", "--n-folds", "3", env=env).exit_code == 0
    for fold in ("0", "1"):
        result = invoke("train", "digits", "--fold", fold, "--run-name", "r1", *FAST, env=env)
        assert result.exit_code == 0, result.output
    return tmp_path, env


def test_submit_reads_the_test_set_once_and_matches_the_mean_of_each_folds_prediction(trained, monkeypatch):
    tmp_path, env = trained
    stages = []
    real_loader = _build.loader
    monkeypatch.setattr(_build, "loader", lambda comp, frame, root, stage, config, **kw: (
        stages.append(stage), real_loader(comp, frame, root, stage, config, **kw))[1])
    result = invoke("submit", "digits", "--run", "r1", "--folds", "0,1", "--tta", "hflip", "--batch-size", "50",
                    "--device", "cpu", env=env)
    assert result.exit_code == 0, result.output
    assert stages == ["test"]  # one loader over the test set for both folds
    (written,) = sorted((tmp_path / "s" / "digits").glob("*.csv"))

    comp = registry.get().competition("digits")
    run_dir = tmp_path / "r" / "digits" / "r1"
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    root = tmp_path / "d" / "digits"
    test_table = table(comp, root, "test")
    loader = real_loader(comp, test_table, root, "test", config, batch_size=17, device="cpu")
    total = 0
    for fold in (0, 1):  # each fold alone over the whole test set, as submit did before streaming
        model = registry.get().model(config.model, comp.num_classes, comp.in_channels, pretrained=False)
        engine = _build.make_engine(comp, config, model, device="cpu")
        engine.load(run_dir / f"fold{fold}" / "best.pt")
        total = total + engine.predict(loader, views=tta.views("hflip"))
    expected = comp.submission(test_table, total / 2)
    pd.testing.assert_frame_equal(pd.read_csv(written, dtype=str), expected.astype(str), check_dtype=False)


def test_predict_batches_yields_one_merged_array_per_batch(trained):
    tmp_path, _ = trained
    comp = registry.get().competition("digits")
    run_dir = tmp_path / "r" / "digits" / "r1"
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    root = tmp_path / "d" / "digits"
    test_table = table(comp, root, "test")
    batches = list(_predict.predict_batches(comp, config, root, run_dir, ["fold0", "fold1"], test_table, "none",
                                            "cpu", 40))
    assert [len(b) for b in batches] == [min(40, len(test_table) - i) for i in range(0, len(test_table), 40)]
    assert all(b.shape[1] == comp.num_classes for b in batches)
    np.testing.assert_allclose(np.concatenate(batches).sum(axis=1), 1.0, atol=1e-5)


def test_submit_with_the_last_checkpoint_predicts_with_last_pt(trained):
    import shutil

    import torch

    tmp_path, env = trained
    runs = tmp_path / "r" / "digits"
    shutil.copytree(runs / "r1", runs / "r-last")
    last = runs / "r-last" / "fold0" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    checkpoint["model"] = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                           for k, v in checkpoint["model"].items()}  # last.pt now differs from best.pt
    torch.save(checkpoint, last)
    result = invoke("submit", "digits", "--run", "r-last", "--folds", "0", "--tta", "none", "--checkpoint", "last",
                    "--device", "cpu", env=env)
    assert result.exit_code == 0, result.output
    assert "with each model's last.pt" in result.output
    sidecar = json.loads(sorted((tmp_path / "s" / "digits").glob("*.json"))[-1].read_text())
    assert sidecar["checkpoint"] == "last.pt"
    comp = registry.get().competition("digits")
    config = Config.from_dict(json.loads((runs / "r-last" / "config.json").read_text()))
    root = tmp_path / "d" / "digits"
    test_table = table(comp, root, "test")
    by_last = _predict.predict(comp, config, root, runs / "r-last", ["fold0"], test_table, "none", "cpu", 64,
                              checkpoint="last.pt")
    by_best = _predict.predict(comp, config, root, runs / "r-last", ["fold0"], test_table, "none", "cpu", 64)
    assert not np.allclose(by_last, by_best)
    written = pd.read_csv(sorted((tmp_path / "s" / "digits").glob("*.csv"))[-1], dtype=str)
    pd.testing.assert_frame_equal(written, comp.submission(test_table, by_last).astype(str), check_dtype=False)
    (runs / "r-last" / "fold0" / "last.pt").unlink()
    refused = CliRunner().invoke(cli, ["submit", "digits", "--run", "r-last", "--folds", "0", "--checkpoint", "last"],
                                 env=env)
    assert refused.exit_code == 1 and "no last.pt for fold0" in refused.output and "--checkpoint best" in refused.output


def test_a_fixed_mask_threshold_skips_the_search(monkeypatch, tmp_path):
    from compkit import postprocess

    comp = registry.get().competition("siim")
    monkeypatch.setattr(postprocess, "search_chunks", lambda *a, **k: pytest.fail("searched"))
    params = submitting._postprocess(comp, Config(mask_threshold=0.4), tmp_path, {"oof": []})
    assert params == {"threshold": 0.4, "min_area": 0}
    with pytest.raises(Exception, match="mask_threshold"):
        Config(mask_threshold=1.0)
