"""compkit pack: a run's folds as a Kaggle dataset folder that compkit submit reads like the run itself."""

from __future__ import annotations

import importlib.metadata
import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compkit import pack as packing
from compkit import pipeline, postprocess, registry
from compkit.cli import cli
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import submitting
from compkit.places import Places
from tests.fake_kaggle import FakeKaggle, point_client_at

FAST = {"epochs": 1, "batch_size": 64, "device": "cpu", "model": "timm/resnet10t", "precise_bn": 0, "num_workers": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A digits run with one trained fold (one epoch of a ResNet-10t on the demo)."""
    root = tmp_path_factory.mktemp("run")
    where = Places(root / "data", root / "runs", root / "submissions")
    pipeline.download("digits", where, demo=True)
    pipeline.train("digits", 0, where, overrides=FAST, run="r1", quiet=True)
    return where


def make_pack(where, out, *args):
    result = CliRunner().invoke(cli, ["pack", "digits", "--runs-dir", str(where.runs), "--run-name", "r1",
                                      "--out", str(out), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_a_pack_holds_weights_config_wheels_requirements_and_dataset_metadata(run, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    out = tmp_path / "pack"
    result = make_pack(run, out, "--folds", "0")
    assert f"packed digits run r1, folds 0: {out} (" in result.output and "MiB)" in result.output
    packed_run = out / "digits" / "r1"
    assert sorted(p.name for p in packed_run.iterdir()) == ["config.json", "fold0", "packed.json"]
    assert sorted(p.name for p in (packed_run / "fold0").iterdir()) == ["best.pt", "fold.json"]  # no oof, no last.pt
    source = run.runs / "digits" / "r1"
    assert (packed_run / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert json.loads((packed_run / "fold0" / "fold.json").read_text()) == json.loads((source / "fold0" / "fold.json").read_text())
    recorded = json.loads((packed_run / "packed.json").read_text())
    cv = submitting.cross_validation(registry.get().competition("digits"), source, [0])
    assert recorded["folds"] == [0] and recorded["cv_score"] == pytest.approx(cv["score"])

    info = json.loads((out / "pack.json").read_text())
    assert info["competition"] == "digits" and info["kaggle"] == "digit-recognizer" and info["run"] == "r1"
    assert info["folds"] == "0" and info["tta"] == "none" and info["distributions"] == ["compkit", "compkit-digits"]
    metadata = json.loads((out / "dataset-metadata.json").read_text())
    assert metadata == {"title": "compkit digits r1", "id": "someone/compkit-digits-r1", "licenses": [{"name": "CC0-1.0"}]}

    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    assert wheels == ["compkit-0.1.0-py3-none-any.whl", "compkit_digits-0.1.0-py3-none-any.whl"]
    with zipfile.ZipFile(out / "wheels" / wheels[0]) as wheel:  # each wheel holds its own project only
        tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {"compkit", "compkit-0.1.0.dist-info"}
    with zipfile.ZipFile(out / "wheels" / wheels[1]) as wheel:
        assert "compkit_digits/recipes/digits-demo.toml" in wheel.namelist()

    requirements = (out / "requirements.txt").read_text().splitlines()
    assert f"torch=={importlib.metadata.version('torch')}" in requirements
    assert f"timm=={importlib.metadata.version('timm')}" in requirements
    assert not any(line.startswith(("compkit", "pytest", "hypothesis")) for line in requirements)  # no extras


def test_packed_weights_load_through_engine_load_as_the_run_s(run, tmp_path):
    out = tmp_path / "pack"
    make_pack(run, out, "--folds", "0")
    original = run.runs / "digits" / "r1" / "fold0" / "best.pt"
    packed = out / "digits" / "r1" / "fold0" / "best.pt"
    checkpoint = torch.load(packed, weights_only=True)
    assert checkpoint["ema"] is None and "optimizer" not in checkpoint and checkpoint["half"] is False
    assert checkpoint["best_epoch"] == 1 and checkpoint["metric"] == "accuracy"
    first, second = engine_for(run), engine_for(run)
    first.load(original)
    second.load(packed)
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name


def engine_for(where):
    from compkit.pipeline import _build

    comp = registry.get().competition("digits")
    config = Config.from_dict(json.loads((where.runs / "digits" / "r1" / "config.json").read_text()))
    model = registry.get().model(config.model, comp.num_classes, comp.in_channels, pretrained=False)
    return _build.make_engine(comp, config, model, device="cpu")


def test_half_stores_float16_weights_that_predict_like_the_full_ones(run, tmp_path):
    full, half = tmp_path / "full", tmp_path / "half"
    make_pack(run, full, "--folds", "0")
    make_pack(run, half, "--folds", "0", "--half")
    weights = torch.load(half / "digits" / "r1" / "fold0" / "best.pt", weights_only=True)["model"]
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert any(v.dtype == torch.int64 for v in weights.values())  # BatchNorm's counters stay integers
    sizes = [(folder / "digits" / "r1" / "fold0" / "best.pt").stat().st_size for folder in (full, half)]
    assert sizes[1] < 0.55 * sizes[0]
    images = torch.randn(8, 1, 28, 28)
    outputs = []
    for folder in (full, half):
        engine = engine_for(run)
        engine.load(folder / "digits" / "r1" / "fold0" / "best.pt")
        engine.model.eval()
        with torch.no_grad():
            outputs.append(torch.softmax(engine.model(images), 1))
    assert outputs[1].dtype == torch.float32  # loaded into the float32 model
    assert torch.allclose(outputs[0], outputs[1], atol=1e-2)


def test_an_existing_pack_is_kept_unless_force_and_a_failed_pack_leaves_nothing(run, tmp_path, monkeypatch):
    out = tmp_path / "pack"
    make_pack(run, out, "--folds", "0")
    with pytest.raises(CompkitError, match="already exists; pass --force"):
        packing.pack("digits", run, run="r1", out=out)
    (out / "marker").write_text("old")

    def broken(sources, folder):
        raise CompkitError("no wheel today")

    monkeypatch.setattr(packing, "_build_wheels", broken)
    with pytest.raises(CompkitError, match="no wheel today"):
        packing.pack("digits", run, run="r1", out=out, force=True)
    assert (out / "marker").read_text() == "old"  # the old pack is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pack.lock", "pack"]  # no staging folder left
    monkeypatch.undo()
    packing.pack("digits", run, run="r1", out=out, force=True)
    assert not (out / "marker").exists() and (out / "wheels").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pack.lock", "pack"]


def test_unfinished_or_missing_folds_are_refused(run, tmp_path):
    with pytest.raises(CompkitError, match=r"fold\(s\) \[3\] of run r1 have no best.pt"):
        packing.pack("digits", run, run="r1", fold_spec="0,3", out=tmp_path / "pack")
    assert not (tmp_path / "pack").exists()


def test_a_non_editable_install_has_no_source_to_build_a_wheel_from():
    import pluggy

    import compkit_digits

    with pytest.raises(CompkitError, match="pluggy is not an editable install"):
        packing.source_dir("pluggy", Path(pluggy.__file__))
    assert (packing.source_dir("compkit-digits", Path(compkit_digits.__file__)) / "pyproject.toml").is_file()


def test_dataset_slugs_and_titles_fit_the_client_s_limits():
    assert packing.dataset_slug("plant-pathology", "20261122-140000") == "compkit-plant-pathology-20261122-140000"
    long = packing.dataset_metadata("me", "a-very-long-competition-name-indeed", "run_with.Odd-chars" * 3)
    slug = long["id"].split("/")[1]
    assert 6 <= len(slug) <= 50 and 6 <= len(long["title"]) <= 50
    assert all(c.isalnum() and c.islower() or c.isdigit() or c == "-" for c in slug) and not slug.endswith("-")


def test_a_segmentation_pack_carries_the_post_processing_submit_chooses(tmp_path):
    """A fabricated SIIM run (random OOF masks): the pack's postprocess.json is the OOF search's choice,
    and submit on the pack reads it instead of searching (the pack has no OOF)."""
    comp = registry.get().competition("siim")
    run_dir = tmp_path / "runs" / "siim" / "s1"
    (run_dir / "fold0").mkdir(parents=True)
    config = comp.defaults.replace(model="unet/resnet18", image_size=16)
    (run_dir / "config.json").write_text(config.to_json())
    torch.save({"format": 1, "model": {"w": torch.ones(3)}, "ema": None, "best_epoch": 1}, run_dir / "fold0" / "best.pt")
    (run_dir / "fold0" / "fold.json").write_text(json.dumps({"best_epoch": 1, "epochs_run": 1, "epochs": 1}))
    rng = np.random.default_rng(0)
    targets = np.zeros((12, 16, 16), np.float16)
    targets[:6, 4:10, 4:10] = 1
    probabilities = np.clip(targets * 0.7 + rng.random((12, 16, 16)) * 0.4, 0, 1).astype(np.float16)
    np.savez(run_dir / "fold0" / "oof.npz", ids=np.arange(12).astype(str), probabilities=probabilities, targets=targets)
    where = Places(tmp_path / "data", tmp_path / "runs", tmp_path / "submissions")
    out = packing.pack("siim", where, run="s1", fold_spec="0", out=tmp_path / "pack")
    chosen = json.loads((out / "siim" / "s1" / "postprocess.json").read_text())
    cv = submitting.cross_validation(comp, run_dir, [0])
    (saved,) = cv["oof"]
    expected = postprocess.search(saved.probabilities(), np.asarray(saved.targets), triple=True)
    assert chosen == json.loads(json.dumps(expected))
    packed_cv = submitting.packed_cv(json.loads((out / "siim" / "s1" / "packed.json").read_text()), [0])
    assert "targets" not in packed_cv
    assert submitting._postprocess(comp, config, out / "siim" / "s1", packed_cv) == chosen


REF = "fake-user/compkit-digits-r1"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A running fake Kaggle the real client talks to; its temporary files (the zips of the pack's folders,
    its resumable-upload state) go to a folder of this test, not the machine's shared temp folder."""
    server = FakeKaggle().start()
    (tmp_path / "home").mkdir()
    point_client_at(monkeypatch, server, tmp_path / "home")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    yield server
    server.stop()


def member(archive: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        return opened.read(name)


def assert_uploaded_the_pack(fake, files: list[dict], out: Path) -> None:
    """``files`` (a CreateDataset/CreateDatasetVersion body's) are the pack's top-level entries, folders as zips."""
    uploaded = fake.uploaded(files)
    assert sorted(uploaded) == ["digits.zip", "pack.json", "requirements.txt", "wheels.zip"]  # no metadata file
    for name in ("pack.json", "requirements.txt"):
        assert uploaded[name] == (out / name).read_bytes(), name
    weights = out / "digits" / "r1" / "fold0" / "best.pt"
    assert member(uploaded["digits.zip"], "r1/fold0/best.pt") == weights.read_bytes()
    assert member(uploaded["digits.zip"], "r1/config.json") == (out / "digits" / "r1" / "config.json").read_bytes()
    wheel = "compkit_digits-0.1.0-py3-none-any.whl"
    assert member(uploaded["wheels.zip"], wheel) == (out / "wheels" / wheel).read_bytes()
    announced = {fake.blobs[item["token"]]["name"]: fake.blobs[item["token"]] for item in files}
    for name, content in uploaded.items():
        assert announced[name]["type"] == "DATASET" and int(announced[name]["contentLength"]) == len(content), name


def test_upload_creates_the_dataset_then_a_new_version(run, fake, tmp_path):
    out = tmp_path / "pack"
    result = make_pack(run, out, "--folds", "0", "--upload")
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == REF  # the client's username
    assert fake.count("GetDatasetStatus") == 2  # compkit's look-up, then the client's own check
    assert fake.dataset_versions == [] and len(fake.created_datasets) == 1
    created = fake.created_datasets[0]
    assert created["ownerSlug"] == "fake-user" and created["slug"] == "compkit-digits-r1"
    assert created["title"] == "compkit digits r1" and created["licenseName"] == "CC0-1.0"
    assert created["isPrivate"] is True
    assert_uploaded_the_pack(fake, created["files"], out)
    assert f"uploading {out} as the new dataset {REF}" in result.output
    assert f"uploaded dataset {REF} https://www.kaggle.com/datasets/{REF}" in result.output

    result = make_pack(run, out, "--folds", "0", "--force", "--upload", "--message", "second")
    assert len(fake.created_datasets) == 1 and len(fake.dataset_versions) == 1
    version = fake.dataset_versions[0]
    assert version["ownerSlug"] == "fake-user" and version["datasetSlug"] == "compkit-digits-r1"
    assert version["body"]["versionNotes"] == "second"
    assert not set(item["token"] for item in version["body"]["files"]) & set(item["token"] for item in created["files"])
    assert_uploaded_the_pack(fake, version["body"]["files"], out)  # the new pack's bytes
    assert fake.count("GetDatasetStatus") == 3 and fake.count("CreateDataset") == 1
    assert f"uploading {out} as a new version of dataset {REF}" in result.output


@pytest.mark.parametrize("failure", ["refused", "upload"])
def test_a_dataset_kaggle_refuses_or_an_upload_that_fails_is_a_one_line_error(run, fake, tmp_path, failure):
    if failure == "refused":
        fake.answers["CreateDataset"] = {"error": "Slug taken"}
        expected = f"Error: Kaggle refused dataset {REF}: Slug taken"
    else:  # a PUT of the file's bytes fails: no dataset may be created without that file
        fake.fail_upload = True
        expected = f"Error: the kaggle client failed while creating dataset {REF}: ValueError: Upload unsuccessful: "
    result = CliRunner().invoke(cli, ["pack", "digits", "--runs-dir", str(run.runs), "--run-name", "r1",
                                      "--folds", "0", "--out", str(tmp_path / "pack"), "--upload"])
    assert result.exit_code == 1 and type(result.exception) is SystemExit, result.output  # not an uncaught error
    assert result.output.splitlines()[-1].startswith(expected), result.output
    assert "Traceback" not in result.output
    assert fake.count("CreateDataset") == (failure == "refused") and fake.dataset_refs == set()
