"""The training Engine: fit, evaluate and predict any model with any loss and score function.

It knows nothing about competitions. It adds mixed precision, gradient accumulation and clipping,
weight EMA, per-epoch seeding (a resumed run replays the same epochs), atomic checkpoints and DDP.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from compkit import _distributed, _io, console, oof
from compkit.errors import CompkitError
from compkit.loaders import (  # noqa: F401 - re-exported: the loader API is part of the Engine's
    EpochSampler,
    SeededDataset,
    default_workers,
    derive_seed,
    make_loader,
    resolve_device,
    seed_everything,
)
from compkit.optim import Schedule, optimizer_steps_per_epoch

# The training loop reads losses back from the device only every this many batches: a read is a
# CUDA synchronisation, and one per batch would leave the GPU idle while Python queues the next step.
# Each epoch also reads them at its last batch, and one shorter than SYNC_EVERY at its half too, so
# even a short epoch's bar shows the loss and speed.
SYNC_EVERY = 20
SELECTIONS = ("metric", "train_loss", "last")  # which epoch best.pt keeps
# Validation loss above this many times the training loss for DIVERGED_EPOCHS epochs in a row gets
# one note naming the usual causes.
DIVERGED_RATIO = 10.0
DIVERGED_EPOCHS = 3
# curves.png draws the loss on a log axis once the validation loss spans this factor (a spike would
# flatten every other epoch against the x axis).
LOG_LOSS_RATIO = 10.0
# float16's loss scaler skips a step whose gradients overflowed and halves its scale; a few skips are
# normal, a long run of them means the gradients are NaN at any scale.
MAX_SKIPPED_STEPS = 50
ACTIVATIONS = ("softmax", "sigmoid", None)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
TIMING_COLUMNS = ("seconds", "images_per_second")



# ----------------------------------------------------------------------------------------------------------
# The Engine


@dataclass
class FitState:
    """Where a fit stands; saved in last.pt so that a resumed run carries on from it."""

    epoch: int = 0  # epochs completed (1-based numbering, 0 = none yet)
    step: int = 0  # optimizer steps taken
    best_score: float | None = None
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per epoch
    stopped_early: bool = False
    swa: dict[str, Any] | None = None  # how the weight average of the last epochs scored, when on


@dataclass
class Predictions:
    """One process's (or, merged, all) predictions; ``indices`` are dataset indices, None if in order."""

    probabilities: np.ndarray
    targets: np.ndarray | None = None
    indices: np.ndarray | None = None
    loss_sum: float = 0.0
    count: int = 0


class Engine:
    """Trains ``model`` with ``loss`` (logits, target) -> scalar, and predicts probabilities.

    ``task`` (a ``compkit.tasks.Task`` or its name) says how logits become probabilities, whether outputs
    are maps (TTA inverts them) and what the out-of-fold file keeps; without one, ``activation`` turns
    logits into probabilities ("softmax" over dim 1, "sigmoid", or None: as is) and outputs are kept as
    they come (``compkit.tasks.Raw``).
    ``amp``: "bf16" | "fp16" | "off" (CUDA only; CPU runs float32). ``ema``: decay of a weight EMA
    (0 = off) that is then evaluated, saved and used by ``predict``. ``precise_bn``: before each
    validation, recompute BatchNorm's running statistics as a plain average over this many training
    batches with the epoch's final weights (0 = off: keep training's running averages).
    ``batch_transform(images, targets, epoch)``: applied to every training batch on the device (mixup,
    cutmix); it returns the new pair. ``frozen`` parameters (a fine-tune's body) do not change during
    the first ``freeze_epochs`` epochs (BatchNorm statistics still follow the data). ``select``: which
    epoch best.pt keeps, "metric" (validation score), "train_loss" (lowest) or "last". ``swa``: average
    the weights of the last this many epochs (torch.optim.swa_utils), recompute BatchNorm for the
    average, score it on the validation fold and keep it as best.pt when it beats the best epoch.
    ``keep_top``: also keep the weights-only checkpoints of the this many best epochs (ranked as ``select``
    picks best.pt) in out_dir/top/epochNNN.pt, for checkpoint averaging (``compkit average``); 0 = off.
    ``quiet`` hides the progress bars and notes; the line per epoch and the final best line always
    print (on the main process). Under torchrun the process group is set up here; use the Engine as a context
    manager (or call ``close()``) to leave it cleanly.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        schedule: Schedule | None = None,
        *,
        activation: str | None = "softmax",
        task: Any = None,
        device: str | torch.device = "auto",
        amp: str = "off",
        channels_last: bool = False,
        compile: bool = False,
        accumulate: int = 1,
        clip_grad: float = 0.0,
        ema: float = 0.0,
        precise_bn: int = 0,
        seed: int = 42,
        quiet: bool = False,
        batch_transform: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, ...]] | None = None,
        frozen: Sequence[nn.Parameter] = (),
        freeze_epochs: int = 0,
        select: str = "metric",
        swa: int = 0,
        keep_top: int = 0,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise CompkitError(f"unknown activation {activation!r}; available: softmax, sigmoid, None")
        if amp not in AMP_DTYPES:
            raise CompkitError(f"unknown amp mode {amp!r}; available: {', '.join(AMP_DTYPES)}")
        self.device = resolve_device(device)
        self._owns_process_group = _distributed.start(self.device)
        self.main = _distributed.is_main()
        self.quiet = quiet or not self.main
        from compkit import tasks

        self.task = tasks.Raw(activation) if task is None else tasks.get(task)
        if (precise_bn or swa) and not self.task.images_alone:
            raise CompkitError(f"precise_bn and swa recompute BatchNorm by running the model on training images "
                               f"alone; a {self.task.name} model needs its targets in train mode: set precise_bn=0 "
                               "and swa=0")
        self.activation, self.loss, self.optimizer = self.task.activation, loss, optimizer
        self.schedule = schedule or Schedule()
        self.accumulate, self.clip_grad, self.seed = max(1, accumulate), clip_grad, seed
        self.precise_bn = max(0, precise_bn)
        self.batch_transform = batch_transform
        self.frozen, self.freeze_epochs = list(frozen), freeze_epochs
        if select not in SELECTIONS:
            raise CompkitError(f"unknown checkpoint selection {select!r}; available: {', '.join(SELECTIONS)}")
        self.select = select
        self.swa_epochs = max(0, swa)
        self.keep_top = max(0, keep_top)
        self.amp_dtype = self._amp_dtype(amp)
        # float16 overflows above 65504, so its gradients need scaling; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.channels_last = channels_last and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        self.model = model.to(self.device, memory_format=self._memory_format)
        if isinstance(loss, nn.Module):
            loss.to(self.device)  # class weights and similar buffers
        self.ema = self._make_ema(ema)
        self.swa = AveragedModel(self.model) if self.swa_epochs else None
        self._ddp, self.network = self._wrap(compile)
        self._skipped_in_a_row = 0

    # -- set-up helpers --------------------------------------------------------------------------------

    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        dtype = AMP_DTYPES[amp]
        if dtype is not None and self.device.type != "cuda":
            self._note(f"amp={amp} applies on CUDA only; this {self.device.type} run uses float32")
            return None
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            self._note("this GPU has no native bfloat16; using amp=fp16 with a loss scaler instead")
            return torch.float16
        return dtype

    def _make_ema(self, decay: float) -> nn.Module | None:
        if decay <= 0:
            return None
        from timm.utils import ModelEmaV3

        # Warm-up ramps the decay from 0 towards ``decay`` over the first steps, so a short fine-tune's
        # EMA is not dominated by the initial weights.
        return ModelEmaV3(self.model, decay=decay, use_warmup=True)

    def _wrap(self, compile: bool) -> tuple[nn.Module | None, nn.Module]:
        """(the DDP wrapper or None, the module the training step calls)."""
        network, ddp = self.model, None
        if _distributed.active() and self.optimizer is not None:  # DDP only matters for training
            device_ids = [self.device] if self.device.type == "cuda" else None
            network = ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if compile and self.device.type != "cuda":
            self._note("compile=True applies on CUDA only; this CPU run stays eager")
        elif compile:
            network = torch.compile(network)
        return ddp, network

    def _note(self, message: str) -> None:
        """Print ``message`` once per process (rank 0, unless quiet), through ``compkit.console``."""
        if not self.quiet:
            console.note(message)

    def _say(self, message: str) -> None:
        """Print ``message`` on the main process, quiet or not."""
        console.echo(message)

    def close(self) -> None:
        """Leave the process group this Engine joined (after a barrier, so no rank exits early)."""
        if self._owns_process_group:
            _distributed.stop()
            self._owns_process_group = False

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- fit ---------------------------------------------------------------------------------------------

    def fit(
        self,
        train_loader: DataLoader,
        valid_loader: DataLoader | None,
        *,
        epochs: int,
        score: Callable[[np.ndarray, np.ndarray], float],
        metric: str = "score",
        higher_is_better: bool = True,
        out_dir: str | os.PathLike | None = None,
        patience: int = 0,
        resume: bool = False,
        config: Mapping[str, Any] | None = None,
        valid_ids: Sequence[str] | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Train for ``epochs``, scoring each on ``valid_loader``; returns the best score and epoch.

        Without a ``valid_loader`` (a final fit on all data) nothing is scored and best.pt holds the
        latest weights.

        ``score(targets, probabilities) -> float`` gets numpy arrays: probabilities (N, C), or (N, H, W)
        for a one-channel dense output (targets squeezed alike). Under ``out_dir`` it writes best.pt,
        last.pt, metrics.csv, oof.npz and curves.png. ``patience`` > 0 stops after that many epochs
        without improvement. ``resume`` continues from out_dir/last.pt.
        """
        run = _Run(metric, higher_is_better, out_dir, dict(config or {}), valid_ids, score, on_epoch_end)
        self._check_fit(train_loader, run, resume)
        self._best_valid: tuple[int, Predictions] | None = None  # the kept epoch's predictions, until written
        state = self._resume(run) if resume else FitState()
        epoch = state.epoch
        try:
            for epoch in range(state.epoch + 1, epochs + 1):
                if state.stopped_early:
                    break
                self._fit_epoch(epoch, epochs, train_loader, valid_loader, run, state, patience)
        except KeyboardInterrupt:
            self._write_best_oof(run)  # the best epoch's predictions so far are not lost
            raise CompkitError(self._interrupted_message(epoch, state, run)) from None
        if self.swa is not None and valid_loader is not None and int(self.swa.n_averaged) > 1:
            self._finish_swa(train_loader, valid_loader, run, state, epochs)
        if valid_loader is not None:
            self._write_final_oof(valid_loader, run, state)
        if state.best_epoch and valid_loader is not None:
            self._say(_best_line(state, run.metric))
        return {
            "metric": metric,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "epochs_run": state.epoch,
            "stopped_early": state.stopped_early,
            **({"swa": state.swa} if self.swa is not None else {}),
        }

    def _check_fit(self, train_loader: DataLoader, run: _Run, resume: bool) -> None:
        if self.optimizer is None or self.loss is None:
            raise CompkitError(
                "Engine.fit needs a loss and an optimizer; this Engine was built for predict only"
            )
        if len(train_loader) == 0:
            raise CompkitError(
                f"the training loader yields no batch: {len(train_loader.dataset)} samples with batch_size "
                f"{train_loader.batch_size} and drop_last; lower batch_size"
            )
        if resume and run.out_dir is None:
            raise CompkitError("resume=True needs out_dir, where last.pt is")
        planned = self.schedule.steps_per_epoch
        actual = optimizer_steps_per_epoch(len(train_loader), self.accumulate)
        if self.schedule.interval == "step" and planned and planned != actual:
            raise CompkitError(
                f"the lr schedule was built for {planned} optimizer steps per epoch but this loader gives "
                f"{actual}; build it with steps_per_epoch=optim.optimizer_steps_per_epoch(len(train_loader), "
                "accumulate)"
            )
        if self.schedule.interval == "plateau" and self.schedule.higher_is_better != run.higher_is_better:
            raise CompkitError(
                "the plateau schedule and fit() disagree on higher_is_better; pass the same value"
            )

    def _fit_epoch(
        self,
        epoch: int,
        epochs: int,
        train_loader: DataLoader,
        valid_loader: DataLoader | None,
        run: _Run,
        state: FitState,
        patience: int,
    ) -> None:
        """One epoch: train, evaluate, keep the best, write the files, decide on early stopping."""
        started = time.perf_counter()
        self._seed_epoch(epoch, train_loader)
        train_loss, images_per_second = self._train_epoch(train_loader, epoch, epochs, state)
        if self.swa is not None and epoch > epochs - self.swa_epochs:
            self.swa.update_parameters(self.model)
        self._recompute_batchnorm(train_loader)
        if valid_loader is None:  # a fit on all data: no score, and the latest weights are the model
            valid, value, valid_loss, improved = None, math.nan, math.nan, True
        else:
            valid = self._evaluate(valid_loader)
            value, valid_loss = self._score(valid, run)
            improved = self._selected(value, valid_loss, train_loss, state, run)
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this epoch used, before an epoch-wise step
        self.schedule.after_epoch(value)
        if improved:
            state.best_score, state.best_epoch = value, epoch
        state.epoch = epoch
        # Every process computes the same decision from the same broadcast score, so all stop together.
        state.stopped_early = patience > 0 and epoch - state.best_epoch >= patience
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "valid_loss": valid_loss,
            run.metric: value,
            "lr": lr,
            "seconds": time.perf_counter() - started,
            "images_per_second": images_per_second,
        }
        state.history.append(row)
        self._check_divergence(state.history)
        if self.main:
            if improved and valid is not None:
                self._best_valid = (epoch, valid)
            self._write_epoch(run, state, improved)
            self._say(_summary_line(row, epochs, run.metric, improved, state.stopped_early, state.history))
            if run.on_epoch_end is not None:
                run.on_epoch_end(epoch, dict(row))

    def _finish_swa(self, train_loader: DataLoader, valid_loader: DataLoader, run: _Run, state: FitState,
                    epochs: int) -> None:
        """Score the weight average of the last epochs; keep it as best.pt only if it beats the best epoch."""
        target = self.ema.module if self.ema is not None else self.model  # what _evaluate and predict use
        kept = {key: value.detach().clone() for key, value in target.state_dict().items()}
        target.load_state_dict(self.swa.module.state_dict())
        self._recompute_batchnorm(train_loader, batches=self.precise_bn or len(train_loader))
        valid = self._evaluate(valid_loader)
        value, valid_loss = self._score(valid, run)
        first = epochs - int(self.swa.n_averaged) + 1
        better = self.select == "metric" and _improved(value, state.best_score, run.higher_is_better)
        self._say(f"swa of epochs {first}-{epochs}: {run.metric} {value:.5f}, valid_loss {valid_loss:.4f} against "
                  f"epoch {state.best_epoch}'s {state.best_score:.5f}: "
                  + ("kept as best.pt" if better else "best.pt stays that epoch"))
        state.swa = {"first_epoch": first, "score": value, "valid_loss": valid_loss, "kept": better}
        if better:
            state.best_score = value
            if self.main and run.out_dir is not None:
                _io.torch_save(self._checkpoint(state, run, full=False), run.out_dir / "best.pt")
            self._best_valid = None if valid is None else (state.best_epoch, valid)
        else:
            target.load_state_dict(kept)

    def _selected(self, value: float, valid_loss: float, train_loss: float, state: FitState, run: _Run) -> bool:
        """Whether this epoch becomes best.pt: by the validation metric, the training loss, or the last."""
        if self.select == "last":
            return True
        if self.select == "train_loss":
            best = [row["train_loss"] for row in state.history if row["epoch"] == state.best_epoch]
            return not best or train_loss < best[0]
        # A saturated metric (AUC 1.0 on a small fold) would keep the earliest, underfit epoch:
        # on a tie the lower validation loss wins.
        return _improved(value, state.best_score, run.higher_is_better) or (
            value == state.best_score and valid_loss < _best_loss(state)
        )

    def _recompute_batchnorm(self, loader: DataLoader, batches: int | None = None) -> None:
        """Precise BatchNorm (Wu & Johnson, "Rethinking 'Batch' in BatchNorm"): running statistics
        averaged over ``precise_bn`` training batches with the final weights of the epoch.

        The running averages kept during training mix statistics of weights from many steps back;
        while a high learning rate moves the weights fast they can be far from what the weights now
        produce, and evaluation-mode predictions collapse although training goes well.
        """
        batches = batches or self.precise_bn
        if not batches:
            return
        model = self.ema.module if self.ema is not None else self.model
        norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        from itertools import islice

        from torch.optim.swa_utils import update_bn

        with self._autocast():
            images = (self._to_device(batch["image"]) for batch in islice(loader, batches))
            update_bn(images, model)
        _distributed.average_([buffer for norm in norms for buffer in (norm.running_mean, norm.running_var)])

    def _check_divergence(self, history: list[dict[str, Any]]) -> None:
        """One note when validation loss has stayed far above training loss for several epochs."""
        recent = history[-DIVERGED_EPOCHS:]
        if len(recent) == DIVERGED_EPOCHS and all(
            row["valid_loss"] > DIVERGED_RATIO * row["train_loss"] for row in recent
        ):
            self._note(
                f"validation loss has been over {DIVERGED_RATIO:g}x the training loss for {DIVERGED_EPOCHS} "
                "epochs. Likely causes: the valid transforms preprocess differently from the train ones "
                "(size, normalisation, channels); BatchNorm statistics that lag fast-moving weights or come "
                "from tiny batches (try --set precise_bn=200, a larger batch_size, or a model whose last "
                "stage is not 1x1 at this image size); a learning rate too high (try a lower lr)"
            )

    def _seed_epoch(self, epoch: int, loader: DataLoader) -> None:
        """Seed everything from (seed, epoch), so epoch k is the same whether or not the run was resumed."""
        seed_everything(derive_seed(self.seed, epoch))
        sampler = getattr(loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)

    def _interrupted_message(self, epoch: int, state: FitState, run: _Run) -> str:
        where = (
            f"{run.out_dir}/last.pt holds epoch {state.epoch}" if run.out_dir else "no out_dir, nothing saved"
        )
        return f"training interrupted in epoch {epoch}; {where}. Run it again with resume to carry on."

    # -- one training epoch ------------------------------------------------------------------------------

    def _train_epoch(self, loader: DataLoader, epoch: int, epochs: int, state: FitState) -> tuple[float, float]:
        """Train on every batch of ``loader`` once; (mean loss over all processes, images per second)."""
        self.network.train()
        batches = len(loader)
        halfway = batches // 2 if batches < SYNC_EVERY else 0
        window = _LossWindow()
        started = time.perf_counter()
        # The context closes the bar on an error or Ctrl-C too, so the message is not printed on its line.
        with self._progress(loader, f"epoch {epoch}/{epochs}") as progress:
            for index, batch in enumerate(progress):
                images = self._to_device(batch["image"])
                target = self.task.to_device(batch["target"], self._to_device)
                if self.batch_transform is not None:  # e.g. mixup/cutmix, on the device
                    images, target = self.batch_transform(images, target, epoch)
                update = (index + 1) % self.accumulate == 0 or index + 1 == batches
                with self._gradient_sync(update):
                    with self._autocast():
                        loss = self.task.training_loss(self.network, self.loss, images, target)
                    self._backward(loss, self._group_size(index, batches))
                if update and self._optimizer_step(epoch, index):
                    state.step += 1
                    self._after_step(state.step)
                window.add(loss.detach(), len(images))
                commit = (index + 1) % SYNC_EVERY == 0 or index + 1 == batches
                if commit or index + 1 == halfway:
                    losses, mean = window.read(commit)
                    self._check_losses(losses, epoch, index, batches)
                    speed = window.images / _since(started)
                    progress.set_postfix({"loss": f"{mean:.4f}", "img/s": f"{speed:,.0f}"})
        seconds = _since(started)
        total, count, images = _distributed.sum_all([window.total, window.count, window.images], self.device)
        return total / max(1, count), images / seconds

    def _group_size(self, index: int, batches: int) -> int:
        """Batches in ``index``'s accumulation group; the last group of an epoch may be shorter."""
        start = index - index % self.accumulate
        return min(self.accumulate, batches - start)

    def _gradient_sync(self, update: bool) -> contextlib.AbstractContextManager:
        # DDP would all-reduce gradients after every backward; between optimizer steps that is wasted.
        if self._ddp is not None and not update:
            return self._ddp.no_sync()
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor, group_size: int) -> None:
        """Backpropagate ``loss``, averaged over the batches of its accumulation group."""
        if group_size > 1:
            loss = loss / group_size
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _optimizer_step(self, epoch: int, index: int) -> bool:
        """Clip, step and zero the gradients; False when fp16's scaler skipped the step."""
        if epoch <= self.freeze_epochs:
            # frozen: without a gradient the optimizer leaves a parameter, its moments and its decay alone
            for parameter in self.frozen:
                parameter.grad = None
        if self.scaler is None:
            self._clip_gradients()
            self.optimizer.step()
            taken = True
        else:
            scale = self.scaler.get_scale()
            if self.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            self._clip_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            taken = self.scaler.get_scale() >= scale  # the scale only shrinks on a skipped step
            self._count_skips(taken, epoch, index)
        self.optimizer.zero_grad(set_to_none=True)
        return taken

    def _clip_gradients(self) -> None:
        if self.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)

    def _count_skips(self, taken: bool, epoch: int, index: int) -> None:
        self._skipped_in_a_row = 0 if taken else self._skipped_in_a_row + 1
        if self._skipped_in_a_row >= MAX_SKIPPED_STEPS:
            raise CompkitError(
                f"fp16's loss scaler skipped {self._skipped_in_a_row} steps in a row (epoch {epoch}, step "
                f"{index + 1}): the gradients are not finite at any scale. Lower lr, set clip_grad, or use amp=bf16"
            )

    def _after_step(self, step: int) -> None:
        self.schedule.after_step()
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def _check_losses(self, losses: torch.Tensor, epoch: int, last_index: int, batches: int) -> None:
        """Stop on a non-finite loss (all processes together); fp16 leaves that to its scaler."""
        bad = (~torch.isfinite(losses)).nonzero().flatten()
        if self.scaler is not None or not _distributed.any_rank(len(bad) > 0, self.device):
            return
        if len(bad) == 0:
            raise CompkitError(f"the training loss became non-finite on another process in epoch {epoch}")
        step = last_index - len(losses) + int(bad[0]) + 2  # 1-based step within the epoch
        raise CompkitError(
            f"the training loss is {losses[bad[0]].item()} in epoch {epoch}, step {step} of {batches}. "
            "Lower lr, set clip_grad, check the targets and the loss, or try amp=off"
        )

    # -- evaluation and prediction -----------------------------------------------------------------------

    def _evaluate(self, loader: DataLoader) -> Predictions | None:
        """Validation predictions of all processes on rank 0, float16; None elsewhere."""
        shard = self._infer(loader, dtype=torch.float16, with_targets=True, compact=True)
        shards = _distributed.gather_to_main(shard)
        return None if shards is None else _merge(shards)

    def _score(self, valid: Predictions | None, run: _Run) -> tuple[float, float]:
        """(score, valid loss), computed on rank 0 and broadcast so every process agrees."""
        result = None
        if valid is not None:
            if run.valid_ids is not None and len(run.valid_ids) != len(valid.probabilities):
                raise CompkitError(
                    f"valid_ids has {len(run.valid_ids)} ids for {len(valid.probabilities)} validation samples"
                )
            # Scored on the values that oof.npz keeps, so the file reproduces this score exactly.
            value = self.task.validation_score(run.score, valid.targets, self.task.restore(valid.probabilities),
                                               run.higher_is_better)
            result = (value, valid.loss_sum / max(1, valid.count))
        return _distributed.broadcast(result)

    def predict(self, loader: DataLoader, views: Sequence[Any] | None = None) -> np.ndarray:
        """float32 probabilities of every sample of ``loader``, in dataset order, on every process.

        Shape (N, C), or (N, H, W) for a one-channel dense output. ``views``: TTA views from
        ``compkit.tta.views(mode)``, merged as probabilities. Uses the EMA weights when EMA is on.
        """
        shard = self._infer(loader, dtype=torch.float32, with_targets=False, views=views)
        return _merge(_distributed.all_gather(shard)).probabilities

    def predict_batch(self, images: torch.Tensor, views: Sequence[Any] | None = None) -> torch.Tensor:
        """float32 probabilities of one batch of images (on the device), as ``predict`` gives them per
        sample: (B, C), or (B, H, W) for a one-channel dense output."""
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        with torch.inference_mode(), self._autocast():
            output, _ = self._forward(model, self._to_device(images), views)
        return self.task.finish(output)

    def _forward(self, model: nn.Module, images: torch.Tensor,
                 views: Sequence[Any] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities, logits: None under TTA, whose views each have their own)."""
        if views:
            return self.task.predict_views(lambda x: self.task.probabilities(self.task.forward(model, x)), images,
                                           views), None
        logits = self.task.forward(model, images)
        return self.task.probabilities(logits), logits

    def _infer(
        self,
        loader: DataLoader,
        *,
        dtype: torch.dtype,
        with_targets: bool,
        views: Sequence[Any] | None = None,
        compact: bool = False,
    ) -> Predictions:
        """This process's probabilities (and targets and loss sum when ``with_targets``) over ``loader``.

        ``compact``: outputs and targets kept as oof.npz stores them (``Task.stored``, ``Task.stored_target``:
        binary maps as uint8 probabilities in 1/255 steps and uint8 masks, so a validation fold of 512 px
        images takes 2 bytes a pixel, not 4 to 8; multi-class maps as uint8 class indices).
        """
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        probabilities, targets, loss_sum, count = [], [], torch.zeros((), device=self.device), 0
        progress = self._progress(loader, "predict" if views else "valid")
        with torch.inference_mode(), self._autocast(), progress:
            for batch in progress:
                images = self._to_device(batch["image"])
                output, logits = self._forward(model, images, views)
                if with_targets:
                    target = self.task.to_device(batch["target"], self._to_device)
                    if self.loss is not None and not views:
                        loss = self.task.valid_loss(self.loss, logits, target)
                        loss_sum += math.nan if loss is None else loss * len(images)
                    targets.append(self.task.host_target(target, images, compact=compact))
                probabilities.append(self.task.host(output, compact=compact, dtype=dtype))
                count += len(images)
        return Predictions(
            probabilities=_concatenate(probabilities),
            targets=_concatenate(targets) if with_targets else None,
            indices=_shard_indices(loader),
            loss_sum=float(loss_sum),
            count=count,
        )

    # -- small shared pieces -----------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim == 4 and self.channels_last:
            return tensor.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return tensor.to(self.device, non_blocking=True)

    def _progress(self, loader: DataLoader, description: str) -> tqdm:
        hidden = self.quiet or not sys.stderr.isatty()
        return tqdm(loader, desc=description, leave=False, disable=hidden, dynamic_ncols=True, unit="batch")

    # -- checkpoints -------------------------------------------------------------------------------------

    def _checkpoint(self, state: FitState, run: _Run, *, full: bool) -> dict[str, Any]:
        """The checkpoint dict: weights and metadata; ``full`` adds what resuming needs."""
        checkpoint = {
            "format": 1,
            "epoch": state.epoch,
            "step": state.step,
            "metric": run.metric,
            "higher_is_better": run.higher_is_better,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "config": run.config,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
        }
        if full:
            checkpoint |= {
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "history": state.history,
                "stopped_early": state.stopped_early,
                "swa": self.swa.state_dict() if self.swa is not None else None,
            }
        return checkpoint

    def load(self, path: str | os.PathLike, ema: bool = True) -> dict[str, Any]:
        """Load weights from a best.pt/last.pt (the EMA weights when saved and ``ema``); returns the checkpoint."""
        checkpoint = _read_checkpoint(Path(path))
        weights = checkpoint["ema"] if ema and checkpoint.get("ema") is not None else checkpoint["model"]
        self.model.load_state_dict(weights)
        if self.ema is not None:
            self.ema.module.load_state_dict(weights)
        return checkpoint

    def _write_best_oof(self, run: _Run) -> bool:
        """Write the kept epoch's validation predictions, if this process holds them; True when written."""
        if self._best_valid is None or run.out_dir is None or not self.main:
            return False
        epoch, predictions = self._best_valid
        _write_oof(run.out_dir / "oof.npz", predictions, run.valid_ids, epoch=epoch, scale=self.task.scale)
        self._best_valid = None
        return True

    def _write_final_oof(self, valid_loader: DataLoader, run: _Run, state: FitState) -> None:
        """oof.npz for best.pt's epoch. A run resumed after its best epoch no longer holds those
        predictions; unless oof.npz already has them (written when it was interrupted), best.pt
        predicts the validation fold again."""
        if run.out_dir is None or not state.best_epoch:
            return
        written = self._write_best_oof(run)
        stale = self.main and not written and oof.stored_epoch(run.out_dir / "oof.npz") != state.best_epoch
        if not _distributed.broadcast(stale):
            return
        modules = [self.model] + ([self.ema.module] if self.ema is not None else [])
        kept = [{key: value.detach().clone() for key, value in module.state_dict().items()} for module in modules]
        self.load(run.out_dir / "best.pt")
        valid = self._evaluate(valid_loader)
        for module, weights in zip(modules, kept):  # the Engine ends as fit left it: the last epoch's weights
            module.load_state_dict(weights)
        if self.main:
            _write_oof(run.out_dir / "oof.npz", valid, run.valid_ids, epoch=state.best_epoch, scale=self.task.scale)

    def _resume(self, run: _Run) -> FitState:
        """Restore weights, optimizer, schedule, scaler, EMA and progress from out_dir/last.pt."""
        path = run.out_dir / "last.pt"
        if not path.exists():
            self._note(f"{path} does not exist; starting from epoch 1")
            return FitState()
        checkpoint = _read_checkpoint(path)
        self.model.load_state_dict(checkpoint["model"])
        if self.ema is not None and checkpoint["ema"] is not None:
            self.ema.module.load_state_dict(checkpoint["ema"])
        if self.swa is not None and checkpoint.get("swa") is not None:
            self.swa.load_state_dict(checkpoint["swa"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        if self.scaler is not None and checkpoint["scaler"] is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        changed = sorted(key for key in run.config if checkpoint["config"].get(key) != run.config[key])
        if changed:
            self._note(
                f"resuming with a changed config ({', '.join(changed)}); the run will not repeat exactly"
            )
        self._say(f"resuming after epoch {checkpoint['epoch']} from {path}")
        return FitState(
            epoch=checkpoint["epoch"],
            step=checkpoint["step"],
            best_score=checkpoint["best_score"],
            best_epoch=checkpoint["best_epoch"],
            history=list(checkpoint["history"]),
            stopped_early=checkpoint["stopped_early"],
        )

    def _write_epoch(self, run: _Run, state: FitState, improved: bool) -> None:
        """Write this epoch's files; last.pt goes last, so a crash never leaves it ahead of the others.

        oof.npz is not among them: a SIIM fold's is a gigabyte, so it is written once, for the epoch
        that stays best (``_write_final_oof``), or when training is interrupted.
        """
        if run.out_dir is None:
            return
        if improved:
            _io.torch_save(self._checkpoint(state, run, full=False), run.out_dir / "best.pt")
        _io.write_csv(run.out_dir / "metrics.csv", _frame(state.history))
        _write_curves(run.out_dir / "curves.png", state.history, run.metric, state.best_epoch)
        if self.keep_top:
            self._write_top(run, state)
        _io.torch_save(self._checkpoint(state, run, full=True), run.out_dir / "last.pt")

    def _write_top(self, run: _Run, state: FitState) -> None:
        """Keep top/epochNNN.pt for the ``keep_top`` best epochs of the history: this epoch's is written first
        (atomically) when it is one of them, then every other epoch's file is deleted. The files on disk are
        the state: a resumed run (its history from last.pt) carries on, and what a killed epoch or an earlier
        training in this folder left behind goes."""
        kept = set(top_epochs(state.history, run.metric, run.higher_is_better, self.select, self.keep_top))
        folder = run.out_dir / TOP_FOLDER
        if state.epoch in kept:
            _io.torch_save(self._checkpoint(state, run, full=False), folder / top_file(state.epoch))
        for path in sorted(folder.glob("epoch*.pt")) if folder.is_dir() else ():
            if top_file_epoch(path) not in kept:
                path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------
# Helpers without Engine state


@dataclass
class _Run:
    """What fit() was asked for; constant through the run."""

    metric: str
    higher_is_better: bool
    out_dir: Path | None
    config: dict[str, Any]
    valid_ids: Sequence[str] | None
    score: Callable[[np.ndarray, np.ndarray], float]
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None

    def __post_init__(self) -> None:
        self.out_dir = None if self.out_dir is None else Path(self.out_dir)


class _LossWindow:
    """Batch losses kept on the device until ``read`` reads them all back in one synchronisation."""

    def __init__(self) -> None:
        self.pending: list[tuple[torch.Tensor, int]] = []
        self.total = 0.0  # sum of finite batch losses, times batch size
        self.count = 0  # images behind ``total``
        self.images = 0  # all images seen

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.pending.append((loss, images))
        self.images += images

    def read(self, commit: bool = True) -> tuple[torch.Tensor, float]:
        """(the pending batch losses, float32 (B,) on the CPU; the mean of the finite losses so far).

        ``commit`` adds the pending losses to ``total`` and clears them; a read without it leaves them
        pending, so the epoch's mean sums the same groups (the same float rounding) read early or not.
        """
        losses = torch.stack([loss.float() for loss, _ in self.pending]).cpu()
        sizes = torch.tensor([images for _, images in self.pending], dtype=torch.float32)
        finite = torch.isfinite(losses)
        total = self.total + float((losses[finite] * sizes[finite]).sum())
        count = self.count + int(sizes[finite].sum())
        if commit:
            self.total, self.count = total, count
            self.pending.clear()
        return losses, total / max(1, count)


TOP_FOLDER = "top"  # out_dir/top/epochNNN.pt: the keep_top best epochs' weights


def top_file(epoch: int) -> str:
    """The name of epoch ``epoch``'s file in top/: epoch007.pt."""
    return f"epoch{epoch:03d}.pt"


def top_file_epoch(path: Path) -> int | None:
    """The epoch of a top/epochNNN.pt file; None for any other name."""
    digits = path.stem[len("epoch"):]
    named = path.stem.startswith("epoch") and digits.isdigit() and path.suffix == ".pt"
    return int(digits) if named else None


def top_epochs(history: Sequence[Mapping[str, Any]], metric: str, higher_is_better: bool, select: str,
               count: int) -> list[int]:
    """The ``count`` best epochs of ``history`` (metrics rows), best first, ranked as ``select`` picks
    best.pt: by the metric (a tie goes to the lower validation loss, then the earlier epoch; an epoch
    without a finite score never counts), by the lowest training loss, or the latest."""
    rows = list(history)
    if select == "last":
        ranked = sorted(rows, key=lambda row: -row["epoch"])
    elif select == "train_loss":
        ranked = sorted((row for row in rows if math.isfinite(row["train_loss"])),
                        key=lambda row: (row["train_loss"], row["epoch"]))
    else:
        sign = -1.0 if higher_is_better else 1.0

        def key(row: Mapping[str, Any]) -> tuple[float, float, int]:
            loss = row["valid_loss"] if math.isfinite(row["valid_loss"]) else math.inf
            return sign * row[metric], loss, row["epoch"]

        ranked = sorted((row for row in rows if math.isfinite(row[metric])), key=key)
    return [int(row["epoch"]) for row in ranked[:count]]


def _since(started: float) -> float:
    return max(time.perf_counter() - started, 1e-9)


def _best_loss(state: FitState) -> float:
    """The validation loss of the best epoch so far (inf when there is none)."""
    rows = [row for row in state.history if row["epoch"] == state.best_epoch]
    return rows[0]["valid_loss"] if rows else math.inf


def _improved(value: float, best: float | None, higher_is_better: bool) -> bool:
    """Is ``value`` better than ``best``? A NaN score never beats a real one."""
    if math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value > best if higher_is_better else value < best


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros((0,), dtype=np.float32)


def _shard_indices(loader: DataLoader) -> np.ndarray | None:
    """Dataset indices behind this process's predictions, when the loader shards them."""
    sampler = getattr(loader, "sampler", None)
    return sampler.indices() if isinstance(sampler, EpochSampler) and sampler.sharded else None


def _merge(shards: list[Predictions]) -> Predictions:
    """All processes' predictions, back in dataset order (each sample exactly once)."""
    if len(shards) == 1 or shards[0].indices is None:
        return shards[0]  # not sharded: every process predicted everything
    order = np.argsort(np.concatenate([shard.indices for shard in shards]), kind="stable")
    targets = None
    if shards[0].targets is not None:
        targets = np.concatenate([shard.targets for shard in shards])[order]
    return Predictions(
        probabilities=np.concatenate([shard.probabilities for shard in shards])[order],
        targets=targets,
        loss_sum=sum(shard.loss_sum for shard in shards),
        count=sum(shard.count for shard in shards),
    )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CompkitError(f"no checkpoint at {path}; train first (it writes best.pt and last.pt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, zero bytes, not a zip, or a pickle weights_only refuses
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CompkitError(
            f"checkpoint {path} is damaged or not safe to load ({reason[:200]}); delete it and train that fold "
            "again, or resume from the other checkpoint of the fold (last.pt or best.pt) if it is intact"
        ) from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CompkitError(f"{path} is not a compkit checkpoint (no 'model' weights in it)")
    return checkpoint


def _frame(history: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(history)


def _write_oof(path: Path, predictions: Predictions, valid_ids: Sequence[str] | None,
               epoch: int | None = None, scale: int | None = None) -> None:
    """oof.npz (``compkit.oof``): ids, probabilities and targets as the task stores them; ``epoch`` they come
    from; ``scale``: uint8 probabilities are quantised by it (None: they are class indices)."""
    count = len(predictions.probabilities)
    ids = valid_ids if valid_ids is not None else [str(i) for i in range(count)]
    oof.write(path, ids, predictions.probabilities, predictions.targets, epoch=epoch, scale=scale)


def _write_curves(path: Path, history: list[dict[str, Any]], metric: str, best_epoch: int) -> None:
    """curves.png: loss, metric and learning rate per epoch, titled by the run folder."""
    figure = _curves_figure(history, metric, best_epoch, _curves_title(path.parent))
    with _io.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=80)


def _curves_figure(history: list[dict[str, Any]], metric: str, best_epoch: int = 0, title: str = "") -> Any:
    """The matplotlib Figure of curves.png: axes "loss", "valid METRIC", "learning rate"."""
    # The object API with an Agg canvas leaves pyplot's global backend (e.g. a notebook's) alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(14, 4), layout="constrained")
    FigureCanvasAgg(figure)
    losses, scores, rates = figure.subplots(1, 3)
    losses.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    losses.plot(epochs, [row["valid_loss"] for row in history], marker="o", label="valid")
    valid = [row["valid_loss"] for row in history if math.isfinite(row["valid_loss"])]
    if valid and min(valid) > 0 and max(valid) > LOG_LOSS_RATIO * min(valid):
        losses.set_yscale("log")
    losses.set(xlabel="epoch", ylabel="loss", title="loss")
    scores.plot(epochs, [row[metric] for row in history], marker="o", color="tab:green")
    scores.set(xlabel="epoch", ylabel=metric, title=f"valid {metric}")
    best = [row for row in history if row["epoch"] == best_epoch]
    if best:
        for axes in (losses, scores):
            axes.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        scores.plot([best_epoch], [best[0][metric]], marker="*", markersize=16, color="tab:red", linestyle="",
                    label=f"best: epoch {best_epoch}, {best[0][metric]:.5f}")
        scores.legend()
    losses.legend()
    rates.plot(epochs, [row["lr"] for row in history], marker="o", color="tab:purple")
    rates.set(xlabel="epoch", ylabel="lr", title="learning rate")
    for axes in (losses, scores, rates):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title)
    return figure


def _curves_title(out_dir: Path) -> str:
    """"NAME, run RUN, fold K" for a runs/NAME/RUN/foldK folder; else the folder's name."""
    if out_dir.name.startswith("fold") and out_dir.name[4:].isdigit() and len(out_dir.parts) >= 3:
        return f"{out_dir.parent.parent.name}, run {out_dir.parent.name}, fold {out_dir.name[4:]}"
    return out_dir.name


def _summary_line(row: dict[str, Any], epochs: int, metric: str, improved: bool, stopping: bool,
                  history: Sequence[dict[str, Any]] = ()) -> str:
    """The line printed after each epoch; ``history`` (the epochs so far) gives the run's ETA."""
    validation = ("(no validation)" if math.isnan(row[metric]) else
                  f"valid_loss {row['valid_loss']:.4f}  {metric} {row[metric]:.5f}{' new best' if improved else ' ' * 9}")
    line = (
        f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  {validation}  lr {row['lr']:.2e}  "
        f"{row['images_per_second']:,.0f} img/s  {row['seconds']:.1f}s"
    )
    remaining = epochs - row["epoch"]
    if stopping:
        return line + "  (early stop)"
    if remaining > 0 and history:
        line += f"  eta {_duration(remaining * sum(past['seconds'] for past in history) / len(history))}"
    return line


def _best_line(state: FitState, metric: str) -> str:
    """The line printed when fit ends: the best epoch, its score and validation loss."""
    if state.swa and state.swa["kept"]:  # best.pt is the weight average, not an epoch
        return (f"best: swa of epochs {state.swa['first_epoch']}-{state.epoch}, {metric} {state.swa['score']:.5f} "
                f"(valid loss {state.swa['valid_loss']:.4f})")
    return f"best: epoch {state.best_epoch}, {metric} {state.best_score:.5f} (valid loss {_best_loss(state):.4f})"


def _duration(seconds: float) -> str:
    """42s, 3m05s, 2h07m."""
    seconds = math.ceil(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
