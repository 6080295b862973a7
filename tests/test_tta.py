"""Tests for compkit.tta with models whose output depends on the orientation of the image."""

from __future__ import annotations

import pytest
import torch

from compkit import tta
from compkit.errors import CompkitError

MODES = ["none", "hflip", "vflip", "flips", "d4"]


def images(height: int = 6, width: int = 6, batch: int = 2, channels: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(height * 100 + width)
    return torch.rand(batch, channels, height, width, generator=generator)


def quadrant_classifier(batch: torch.Tensor) -> torch.Tensor:
    """Probabilities [B, 2]: top-left quadrant against the whole image, plus pixel (0, 1), which
    also breaks the quadrant's symmetry under transposition."""
    height, width = batch.shape[-2:]
    top_left = batch[..., : height // 2, : width // 2].mean(dim=(1, 2, 3))
    logits = torch.stack([6 * top_left, 6 * batch.mean(dim=(1, 2, 3)) + batch[:, 0, 0, 1]], dim=1)
    return logits.softmax(dim=1)


def cumsum_segmenter(batch: torch.Tensor) -> torch.Tensor:
    """Probabilities [B, 1, H, W] from a cumulative sum along W: not equivariant to any view."""
    return torch.sigmoid(batch.mean(dim=1, keepdim=True).cumsum(dim=-1) - 1.0)


def hand_views(mode: str, x: torch.Tensor) -> list[tuple[torch.Tensor, callable]]:
    """(viewed image, function that maps a dense output back) written out independently of tta."""
    pairs = [(x, lambda y: y)]
    if mode in ("hflip", "flips"):
        pairs.append((x.flip(3), lambda y: y.flip(3)))
    if mode in ("vflip", "flips"):
        pairs.append((x.flip(2), lambda y: y.flip(2)))
    if mode == "d4":
        pairs = []
        for k in range(4):
            pairs.append((torch.rot90(x, k, (2, 3)), lambda y, k=k: torch.rot90(y, -k, (2, 3))))
            mirrored = x.flip(3)
            pairs.append(
                (torch.rot90(mirrored, k, (2, 3)), lambda y, k=k: torch.rot90(y, -k, (2, 3)).flip(3))
            )
    return pairs


@pytest.mark.parametrize("mode", MODES)
def test_inverse_undoes_forward_square(mode):
    x = images(5, 5)
    for view in tta.views(mode):
        torch.testing.assert_close(view.inverse(view.forward(x)), x, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["none", "hflip", "vflip", "flips"])
def test_inverse_undoes_forward_non_square(mode):
    x = images(4, 7)
    for view in tta.views(mode):
        assert view.forward(x).shape == x.shape
        torch.testing.assert_close(view.inverse(view.forward(x)), x, rtol=0, atol=0)


def test_view_counts_and_d4_is_eight_distinct_transforms():
    assert [len(tta.views(mode)) for mode in MODES] == [1, 2, 2, 2, 3, 8][:1] + [2, 2, 3, 8]
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    seen = {tuple(view.forward(x).flatten().tolist()) for view in tta.views("d4")}
    expected = {tuple(viewed.flatten().tolist()) for viewed, _ in hand_views("d4", x)}
    assert len(seen) == 8 and seen == expected


@pytest.mark.parametrize("mode", MODES)
def test_classification_equals_hand_computed_average(mode):
    x = images()
    expected = torch.stack([quadrant_classifier(viewed) for viewed, _ in hand_views(mode, x)]).mean(0)
    result = tta.predict(quadrant_classifier, x, tta.views(mode), dense=False)
    assert result.shape == (2, 2)
    torch.testing.assert_close(result, expected)
    if mode != "none":
        # The model really depends on orientation, so a wrong view set would change the answer.
        assert not torch.allclose(result, quadrant_classifier(x), atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_segmentation_equals_hand_computed_average_of_inverted_outputs(mode):
    x = images()
    expected = torch.stack([back(cumsum_segmenter(viewed)) for viewed, back in hand_views(mode, x)]).mean(0)
    result = tta.predict(cumsum_segmenter, x, tta.views(mode), dense=True)
    assert result.shape == (2, 1, 6, 6)
    torch.testing.assert_close(result, expected)


def test_segmentation_on_non_square_images_with_flips():
    x = images(4, 8)
    expected = torch.stack([back(cumsum_segmenter(viewed)) for viewed, back in hand_views("flips", x)]).mean(
        0
    )
    torch.testing.assert_close(tta.predict(cumsum_segmenter, x, tta.views("flips"), dense=True), expected)


def test_lower_resolution_maps_are_inverted_too():
    def pooled(batch):
        return cumsum_segmenter(torch.nn.functional.avg_pool2d(batch, 2))

    x = images(8, 8)
    expected = (pooled(x) + pooled(x.flip(3)).flip(3)) / 2
    torch.testing.assert_close(tta.predict(pooled, x, tta.views("hflip"), dense=True), expected)


def test_merges_probabilities_not_logits():
    x = images()

    def logits(batch):
        return 8 * (batch.mean(dim=1, keepdim=True).cumsum(dim=-1) - 3.0)

    result = tta.predict(lambda batch: torch.sigmoid(logits(batch)), x, tta.views("hflip"), dense=True)
    mean_of_probabilities = (torch.sigmoid(logits(x)) + torch.sigmoid(logits(x.flip(3))).flip(3)) / 2
    probability_of_mean = torch.sigmoid((logits(x) + logits(x.flip(3)).flip(3)) / 2)
    torch.testing.assert_close(result, mean_of_probabilities)
    assert (result - probability_of_mean).abs().max() > 0.05


def test_low_precision_outputs_are_averaged_in_float32():
    result = tta.predict(lambda batch: quadrant_classifier(batch).bfloat16(), images(), tta.views("d4"), dense=False)
    assert result.dtype == torch.float32


def test_d4_on_non_square_images_raises():
    with pytest.raises(CompkitError, match="square") as caught:
        tta.predict(quadrant_classifier, images(4, 6), tta.views("d4"), dense=False)
    assert "4x6" in str(caught.value)


def test_unknown_mode_lists_the_options():
    with pytest.raises(CompkitError, match="flips"):
        tta.views("rotate")


def test_no_views_raises():
    with pytest.raises(CompkitError, match="at least one view"):
        tta.predict(quadrant_classifier, images(), (), dense=False)


class CudaLike(torch.Tensor):
    """A CPU tensor that says it is on CUDA, for the batching rule (CI has no GPU)."""

    @property
    def is_cuda(self):
        return True


def test_views_go_through_the_model_as_one_batch_within_the_pixel_budget(monkeypatch):
    images = torch.randn(2, 3, 8, 8).as_subclass(CudaLike)
    seen = []

    def model(x):
        seen.append(len(x))
        return torch.sigmoid(x[:, :1] * 2)

    merged = tta.predict(model, images, tta.views("d4"), dense=True)
    assert seen == [16]  # 8 views x 2 images, one call
    seen.clear()
    monkeypatch.setattr(tta, "BATCH_PIXELS", 3 * 2 * 8 * 8)  # three views' worth
    assert torch.allclose(tta.predict(model, images, tta.views("d4"), dense=True), merged, atol=1e-6)
    assert seen == [6, 6, 4]  # 3 + 3 + 2 views of 2 images
    seen.clear()
    expected = sum(v.inverse(model(v.forward(images))) for v in tta.views("d4")) / 8
    assert torch.allclose(merged, expected, atol=1e-6)
    seen.clear()
    tta.predict(model, images.as_subclass(torch.Tensor), tta.views("d4"), dense=True)
    assert seen == [2] * 8  # on the CPU, one call per view


def test_out_of_memory_on_the_batched_views_falls_back_to_one_view_at_a_time(monkeypatch):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    images = torch.randn(2, 3, 8, 8).as_subclass(CudaLike)
    sizes = []

    def model(x):
        sizes.append(len(x))
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return x.mean(dim=(1, 2, 3)).sigmoid()[:, None]

    merged = tta.predict(model, images, tta.views("flips"), dense=False)
    assert sizes == [6, 2, 2, 2]
    assert merged.shape == (2, 1)
