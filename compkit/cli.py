"""The ``compkit`` command: parses arguments and calls ``compkit.pipeline``; nothing else.

Importing this loads no torch, so ``compkit --help`` stays fast with any number of plugins.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from compkit import __version__, console
from compkit.errors import CompkitError, user_message


class Group(click.Group):
    """Turns CompkitError into a one-line error and exit code 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CompkitError as error:
            raise click.ClickException(user_message(error)) from None
        except OSError as error:
            from compkit import _io

            if not _io.is_disk_full(error):
                raise
            raise click.ClickException(_io.disk_full_message(error.filename, cleaned=False)) from None
        except KeyboardInterrupt:
            console.echo("interrupted", err=True)
            sys.exit(130)


def data_option(function):
    return click.option("--data-dir", envvar="COMPKIT_DATA_DIR", type=click.Path(file_okay=False),
                        help="Folder that replaces ./data: a competition's data goes to DIR/NAME "
                             "(env COMPKIT_DATA_DIR).")(function)


def runs_option(function):
    return click.option("--runs-dir", envvar="COMPKIT_RUNS_DIR", type=click.Path(file_okay=False),
                        help="Folder that replaces ./runs: runs go to DIR/NAME/<run> (env COMPKIT_RUNS_DIR).")(function)


def submissions_option(function):
    return click.option("--submissions-dir", envvar="COMPKIT_SUBMISSIONS_DIR", type=click.Path(file_okay=False),
                        help="Folder that replaces ./submissions: files go to DIR/NAME "
                             "(env COMPKIT_SUBMISSIONS_DIR).")(function)


def places(data_dir: str | None = None, runs_dir: str | None = None, submissions_dir: str | None = None):
    from compkit.places import Places

    return Places.from_env(data_dir, runs_dir, submissions_dir)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="compkit")
def cli() -> None:
    """compkit: a Kaggle competition kit for image problems.

    \b
    compkit download siim --demo && compkit train siim --fold 0 --recipe demo && compkit submit siim
    """


@cli.command()
@click.argument("name")
@click.option("--demo", is_flag=True, help="Write a small synthetic dataset in the real raw layout (offline).")
@click.option("--force", is_flag=True, help="Fetch again / replace what is there.")
@click.option("--seed", default=0, show_default=True, help="Seed of the demo data.")
@data_option
def download(name: str, demo: bool, force: bool, seed: int, data_dir: str | None) -> None:
    """Fetch a competition's data into data/NAME.

    \b
    Example:
      compkit download plant-pathology        # the real data through the Kaggle API
      compkit download siim --demo            # a synthetic twin, offline
    """
    from compkit import pipeline

    root = pipeline.download(name, places(data_dir), demo=demo, force=force, seed=seed)
    console.echo(f"data ready in {root}")


@cli.command()
@click.argument("name")
@click.option("--n-folds", default=5, show_default=True, help="Number of folds.")
@click.option("--seed", default=42, show_default=True, help="Seed of the split.")
@click.option("--force", is_flag=True, help="Replace an existing, different folds.csv.")
@data_option
def folds(name: str, n_folds: int, seed: int, force: bool, data_dir: str | None) -> None:
    """Split the training data into folds: data/NAME/folds.csv.

    \b
    Example:
      compkit folds siim --n-folds 5 --seed 42
    """
    from compkit import pipeline

    pipeline.make_folds(name, places(data_dir), n_folds=n_folds, seed=seed, force=force)


def _config_epilog() -> str:
    """The config keys for the help text: the core's, then each competition's own (a Config subclass)."""
    from compkit import config

    text = "\b\nConfig keys (--set KEY=VALUE, or a recipe TOML), with their defaults:\n" + config.help_text()
    for name, cls in _competition_configs():
        text += (f"\n\n\b\n{name}'s own keys ({cls.__name__}):\n"
                 + config.help_text(cls, only=config.own_keys(cls)))
    return text


def _competition_configs() -> list[tuple[str, type]]:
    """(name, config class) of each installed competition whose defaults add keys of their own."""
    from compkit import config, registry

    try:
        competitions = registry.get().competitions
    except CompkitError:
        return []  # compkit plugins reports why
    found = [(name, type(comp.defaults)) for name, comp in sorted(competitions.items())]
    return [(name, cls) for name, cls in found if config.own_keys(cls)]


class ConfigHelp(click.Command):
    """A command whose --help ends with the config keys, read when the help is shown (plugins loaded)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(_config_epilog())


def _image_size(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """--image-size 320, 320,480 or 320x480 (height, width), checked as the config checks image_size."""
    from compkit.config import parse_size

    try:
        return None if value is None else parse_size(value)
    except CompkitError as error:
        raise click.BadParameter(user_message(error)) from None


def _parse_sets(name: str, sets: tuple[str, ...]) -> dict[str, Any]:
    """--set KEY=VALUE typed by competition ``name``'s config class, so its own keys are valid too."""
    from compkit import pipeline
    from compkit.config import parse_sets

    return parse_sets(sets, type(pipeline.competition(name).defaults)) if sets else {}


@cli.command(cls=ConfigHelp)
@click.argument("name")
@click.option("--fold", type=int, help="The fold to validate on (default 0).")
@click.option("--full", is_flag=True,
              help="A final fit on every labelled row, no validation, into runs/NAME/<run>/full: for the mean best "
                   "epoch of the run's folds unless --epochs is given (submit --folds all,full uses it).")
@click.option("--dry-run", is_flag=True,
              help="Two batches of training and two of validation through every file a fold writes, in a "
                   "temporary folder: a broken recipe shows in seconds. Nothing is kept.")
@click.option("--folds", "fold_spec", metavar="all|K,K,...",
              help="Train these folds of one run in turn, then print their CV; with --resume, go on from the "
                   "first unfinished one.")
@click.option("--run-name", "--run", "run", envvar="COMPKIT_RUN",
              help="Run id (default: a new timestamp; with --resume: latest; env COMPKIT_RUN). "
                   "Under torchrun spell it --run-name: torchrun takes --run for its --run-path.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from fold<K>/last.pt.")
@click.option("--recipe", help="A recipe TOML file, or the name of one the plugin ships, e.g. demo "
              "(default competitions/NAME.toml if present).")
@click.option("--epochs", type=int, help="Passes over the training folds (config key epochs).")
@click.option("--batch-size", type=int, help="Images per step and process (batch_size).")
@click.option("--lr", type=float, help="The body's learning rate (lr).")
@click.option("--model", help="Registered model, e.g. timm/resnet18 or unet/resnet34 (compkit plugins lists them).")
@click.option("--image-size", metavar="SIZE|H,W", callback=_image_size,
              help="Pixels the images are resized to: a square's side, or height,width as 320,480 or 320x480 "
                   "(image_size).")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--init-from", metavar="RUN[/foldK]",
              help="Start from another run's best weights (its same fold unless /foldK is given): a second stage "
                   "at a larger --image-size, or a fine-tune.")
@click.option("--soft-targets", metavar="RUN",
              help="Train on soft targets: --soft-weight x RUN's out-of-fold probabilities + the rest x the "
                   "label (every training row needs one; validation keeps its labels). Config key soft_targets.")
@click.option("--soft-weight", type=float,
              help="The OOF share of --soft-targets, 0..1 (soft_weight, default 0.3).")
@click.option("--pseudo", metavar="RUN",
              help="Add RUN's confident test predictions as training rows with their predicted class "
                   "(classification; predicted once, cached in RUN/test_predictions.npz). Config key pseudo.")
@click.option("--threshold", "pseudo_threshold", type=float,
              help="--pseudo: the top probability a test row needs (pseudo_threshold, default 0.95).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key; repeatable.")
@click.option("--quiet", is_flag=True, help="No progress bars or notes; the epoch lines and the best line still print.")
@data_option
@runs_option
def train(name: str, fold: int | None, full: bool, dry_run: bool, fold_spec: str | None, run: str | None, resume: bool,
          recipe: str | None, sets: tuple[str, ...], quiet: bool, data_dir: str | None, runs_dir: str | None,
          **flags: Any) -> None:
    """Train one fold (or several of one run); writes runs/NAME/<run>/fold<K>/.

    \b
    Example:
      compkit train siim --fold 0 --epochs 20 --set amp=fp16
      compkit train siim --folds all                 # every fold of one run, then its CV
      compkit train siim --folds all --resume        # after an interruption: on from the unfinished fold
      compkit train siim --full --run-name 20261201-120000   # then a final fit on all labelled data
      compkit train siim --fold 0 --dry-run          # two batches through everything: a broken recipe in seconds
      compkit train siim --fold 0 --resume
      torchrun --nproc_per_node 2 -m compkit train siim --fold 0   # several GPUs
      COMPKIT_RUN=r1 torchrun --nproc_per_node 2 -m compkit train siim --fold 1
      compkit train digits --fold 0 --recipe demo    # a recipe the plugin ships
      compkit train siim --fold 0 --init-from 20261201-120000 --image-size 1024   # a second stage
      compkit train digits --fold 0 --soft-targets r1 --soft-weight 0.3   # 0.3 x r1's OOF + 0.7 x label
      compkit train digits --fold 0 --pseudo r1 --threshold 0.95         # + r1's confident test rows
      compkit train siim-classification --fold 0 --set class_weights=balanced --set sampler=balanced
    """
    from compkit import pipeline

    overrides = {key: value for key, value in flags.items() if value is not None}
    overrides.update(_parse_sets(name, sets))
    options = {"overrides": overrides, "recipe_path": recipe, "run": run, "resume": resume, "quiet": quiet}
    if sum((fold is not None, fold_spec is not None, full)) > 1:
        raise click.UsageError("give one of --fold K, --folds SPEC and --full")
    if dry_run and (fold_spec is not None or resume):
        raise click.UsageError("--dry-run tries one fold from scratch: give it --fold K (or nothing), not --folds "
                               "or --resume")
    if fold_spec is not None:
        pipeline.train_folds(name, fold_spec, places(data_dir, runs_dir), **options)
    else:
        pipeline.train(name, fold or 0, places(data_dir, runs_dir), full=full, dry_run=dry_run, **options)


@cli.command()
@click.argument("name")
@click.option("--run-name", "--run", "run", envvar="COMPKIT_RUN", help="Run id (default: latest; env COMPKIT_RUN).")
@click.option("--folds", "fold_spec", default="all", show_default=True, help="Comma-separated folds or 'all'.")
@click.option("--tta", type=click.Choice(["none", "hflip", "vflip", "flips", "d4"]),
              help="Test-time augmentation (default: the run's config).")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, help="Prediction batch size (default: the run's).")
@click.option("--upload", is_flag=True, help="Submit to Kaggle after writing the file.")
@click.option("--message", help="Submission description for --upload.")
@click.option("--allow-unfinished", is_flag=True, help="Use folds whose training did not end (interrupted).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Each fold's best.pt (the kept epoch) or last.pt (the last epoch trained).")
@click.option("--mask-threshold", type=click.FloatRange(0, 1, max_open=True),
              help="Segmentation: this fixed threshold instead of the run's mask_threshold (0: search on OOF).")
@data_option
@runs_option
@submissions_option
def submit(name: str, run: str | None, fold_spec: str, tta: str | None, device: str | None,
           batch_size: int | None, upload: bool, message: str | None, allow_unfinished: bool, checkpoint: str,
           mask_threshold: float | None, data_dir: str | None, runs_dir: str | None,
           submissions_dir: str | None) -> None:
    """Predict the test set and write submissions/NAME/<stamp>.csv.

    \b
    Example:
      compkit submit siim --folds 0,1,2 --tta hflip
      compkit submit plant-pathology --upload --message "effnet b3, 5 folds"
      compkit submit siim --checkpoint last --mask-threshold 0.5
    """
    from compkit import pipeline

    path = pipeline.submit(name, places(data_dir, runs_dir, submissions_dir), run=run, fold_spec=fold_spec,
                           tta=tta, upload=upload, message=message, device=device, batch_size=batch_size,
                           allow_unfinished=allow_unfinished, checkpoint=checkpoint, mask_threshold=mask_threshold)
    console.echo(f"wrote {path}")


@cli.command()
@click.argument("name")
@click.option("--run-name", "--run", "run", envvar="COMPKIT_RUN",
              help="Run id (default: latest; env COMPKIT_RUN).")
@click.option("--fold", "fold_spec", default="0", show_default=True, metavar="K|K,K,...|all",
              help="The fold(s) to average; all: every trained fold of the run.")
@click.option("--top", type=click.IntRange(min=2), default=3, show_default=True,
              help="Average the weights of this many best epochs (by the validation metric) of those kept.")
@click.option("--keep-if-better", is_flag=True,
              help="Make the average best.pt when it scores better than best.pt (the previous one is kept as "
                   "best_epoch.pt, oof.npz is rewritten). Without it only averaged.pt is written.")
@click.option("--device", help="auto, cpu, cuda or cuda:N (default: the run's).")
@click.option("--batch-size", type=int, help="Validation batch size (default: the run's).")
@data_option
@runs_option
def average(name: str, run: str | None, fold_spec: str, top: int, keep_if_better: bool, device: str | None,
            batch_size: int | None, data_dir: str | None, runs_dir: str | None) -> None:
    """Average the weights of a fold's best epochs (trained with --set keep_top=K), recompute BatchNorm,
    score the average on the fold's validation rows: fold<K>/averaged.pt.

    \b
    Example:
      compkit train siim --fold 0 --set keep_top=3 --run-name r1
      compkit average siim --run r1 --fold 0 --top 3                   # prints its score against best.pt's
      compkit average siim --run r1 --fold all --keep-if-better        # then submit uses the better one
    """
    from compkit import averaging

    averaging.average(name, places(data_dir, runs_dir), run=run, fold_spec=fold_spec, top=top,
                      keep_if_better=keep_if_better, device=device, batch_size=batch_size)


@cli.command()
@click.argument("name")
@click.option("--run-name", "--run", "run", envvar="COMPKIT_RUN",
              help="Run id (default: latest; env COMPKIT_RUN).")
@click.option("--images", "images", required=True, type=click.Path(file_okay=False),
              help="A folder of image files (png, jpg, jpeg, bmp, tif, tiff, webp) to predict.")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="A CSV with columns image,label (file name, class name): print the accuracy and the "
                   "confusion matrix.")
@click.option("--out", type=click.Path(),
              help="The CSV to write (a folder of PNG masks for segmentation); default "
                   "predictions/NAME/<run>-<stamp>.csv (or that folder).")
@click.option("--folds", "fold_spec", default="all", show_default=True, metavar="all|K,K,...[,full]",
              help="The folds (and the full fit) whose predictions are averaged.")
@click.option("--tta", type=click.Choice(["none", "hflip", "vflip", "flips", "d4"]),
              help="Test-time augmentation (default: the run's config).")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, help="Prediction batch size (default: the run's).")
@runs_option
def predict(name: str, run: str | None, images: str, labels: str | None, out: str | None, fold_spec: str,
            tta: str | None, device: str | None, batch_size: int | None, runs_dir: str | None) -> None:
    """Predict a folder of images with a run's folds and TTA, without a competition test table.

    \b
    Example:
      compkit predict digits --run r1 --images my-digits/                 # predictions/digits/r1-<stamp>.csv
      compkit predict digits --images my-digits/ --labels truth.csv       # + accuracy and confusion matrix
      compkit predict siim --images xrays/ --out masks/                   # a PNG mask per image
    """
    from compkit import predict_folder

    path = predict_folder.predict_folder(name, places(runs_dir=runs_dir), run=run, images=Path(images),
                                         labels=Path(labels) if labels else None,
                                         out=Path(out) if out else None, fold_spec=fold_spec, tta=tta,
                                         device=device, batch_size=batch_size)
    console.echo(f"wrote {path}")


@cli.command(name="runs")
@click.argument("name")
@click.option("--diff", nargs=2, metavar="RUN_A RUN_B", help="Show the config keys two runs differ in.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON, for scripts.")
@runs_option
@submissions_option
def runs_command(name: str, diff: tuple[str, str] | None, as_json: bool, runs_dir: str | None,
                 submissions_dir: str | None) -> None:
    """One row per run, oldest first: model, size, epochs, fold scores, OOF CV, full-data model,
    submissions and their best public leaderboard score.

    \b
    Example:
      compkit runs siim
      compkit runs siim --json
      compkit runs siim --diff 20261122-140000 20261123-090000
    """
    import json

    from compkit import pipeline, runs

    where = places(runs_dir=runs_dir, submissions_dir=submissions_dir)
    if diff:
        differences = runs.config_diff(where.runs / name, *diff)
        if as_json:
            console.echo(json.dumps({"a": diff[0], "b": diff[1], "differences": [
                {"key": key, "a": a, "b": b} for key, a, b in differences]}, indent=2))
        else:
            console.echo("\n".join(runs.diff_lines(*diff, differences)))
        return
    rows = runs.run_rows(pipeline.competition(name), where.runs / name, where.submission_dir(name))
    console.echo(json.dumps(rows, indent=2) if as_json else "\n".join(runs.table_lines(rows)))


@cli.command()
@click.argument("name")
@click.option("--image-size", "size", type=int, default=32, show_default=True, help="Side of the downscaled pixels.")
@click.option("--trees", type=int, default=200, show_default=True, help="Trees in the random forest.")
@data_option
def baseline(name: str, size: int, trees: int, data_dir: str | None) -> None:
    """A floor to beat: a random forest on flattened, downscaled pixels, on the same folds and metric.

    \b
    Example:
      compkit baseline siim-classification --image-size 64
    """
    from compkit import pipeline

    pipeline.baseline(name, places(data_dir), size=size, trees=trees)


@cli.command("lr-find", cls=ConfigHelp)
@click.argument("name")
@click.option("--fold", type=int, default=0, show_default=True, help="Whose training rows to use.")
@click.option("--recipe", help="A recipe TOML file or a shipped recipe's name, as for train.")
@click.option("--start", type=float, default=1e-7, show_default=True, help="Lowest lr tried.")
@click.option("--end", type=float, default=1.0, show_default=True, help="Highest lr tried.")
@click.option("--iterations", type=int, default=100, show_default=True, help="Steps over the range.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config key; repeatable.")
@data_option
@runs_option
def lr_find(name: str, fold: int, recipe: str | None, start: float, end: float, iterations: int,
            sets: tuple[str, ...], data_dir: str | None, runs_dir: str | None) -> None:
    """The learning-rate range test: a short run over an exponential lr range; plots runs/NAME/lr_find.png
    and prints the suggested lr. No run is kept.

    \b
    Example:
      compkit lr-find digits --fold 0 --recipe demo
    """
    from compkit import pipeline

    pipeline.lr_find(name, fold, places(data_dir, runs_dir), overrides=_parse_sets(name, sets), recipe_path=recipe,
                     start=start, end=end, iterations=iterations)


@cli.group()
def weights() -> None:
    """Pretrained weights for offline machines (COMPKIT_WEIGHTS_DIR).

    \b
    Example:
      compkit weights pull timm/resnet18 unet/resnet34 --to weights/
    """


@weights.command("pull")
@click.argument("models", nargs=-1, required=True)
@click.option("--to", "folder", envvar="COMPKIT_WEIGHTS_DIR", required=True, type=click.Path(file_okay=False),
              help="Where to store them (env COMPKIT_WEIGHTS_DIR); point COMPKIT_WEIGHTS_DIR there offline.")
def weights_pull(models: tuple[str, ...], folder: str) -> None:
    """Fetch the ImageNet weights of MODELS (timm/VARIANT, or an smp family/ENCODER such as unet/resnet34),
    once, where there is internet; a run with pretrained=true then finds them offline.

    \b
    Example:
      compkit weights pull timm/efficientnet_b0 unet/resnet34 --to weights/
      COMPKIT_WEIGHTS_DIR=weights compkit train siim --fold 0     # offline, pretrained
    """
    from compkit.builtins import pull_weights

    for model in models:
        console.echo(f"wrote {pull_weights(model, Path(folder))}")


@cli.command()
@click.argument("name")
@click.option("--run-name", "--run", "run", envvar="COMPKIT_RUN", help="Run id (default: latest; env COMPKIT_RUN).")
@click.option("--folds", "fold_spec", default="all", show_default=True, metavar="all|K,K,...[,full]",
              help="The folds to pack (and the full fit with 'full').")
@click.option("--half", is_flag=True, help="Store the weights as float16 (half the size).")
@click.option("--out", type=click.Path(file_okay=False), help="Pack folder (default packs/NAME/<run>).")
@click.option("--force", is_flag=True, help="Replace an existing pack.")
@click.option("--upload", is_flag=True, help="Then create the Kaggle dataset, or a new version of it (private).")
@click.option("--message", help="Version notes for --upload.")
@runs_option
def pack(name: str, run: str | None, fold_spec: str, half: bool, out: str | None, force: bool, upload: bool,
         message: str | None, runs_dir: str | None) -> None:
    """Pack a run's folds for an offline Kaggle notebook: weights, config, wheels, dataset metadata.

    \b
    Example:
      compkit pack digits --folds 0,1                 # packs/digits/<run>/
      compkit pack siim --half --upload               # float16 weights, then the Kaggle dataset
    """
    from compkit import pack as packing

    packing.pack(name, places(runs_dir=runs_dir), run=run, fold_spec=fold_spec, half=half, out=out, force=force,
                 upload=upload, message=message)


@cli.command()
@click.argument("name")
@click.option("--run-name", "--run", "run", envvar="COMPKIT_RUN", help="Run id (default: latest; env COMPKIT_RUN).")
@click.option("--pack", "pack_dir", type=click.Path(file_okay=False), help="The pack (default packs/NAME/<run>).")
@click.option("--out", type=click.Path(file_okay=False), help="Notebook folder (default notebooks/NAME/<run>).")
@click.option("--push", is_flag=True, help="Then push it to Kaggle as a private notebook (Kaggle runs it).")
@runs_option
def notebook(name: str, run: str | None, pack_dir: str | None, out: str | None, push: bool,
             runs_dir: str | None) -> None:
    """Write the offline inference notebook of a pack (notebook.ipynb, notebook.py, kernel-metadata.json).

    \b
    Example:
      compkit notebook digits                         # notebooks/digits/<run>/
      compkit notebook siim --pack packs/siim/20261122-140000 --push
    """
    from compkit import notebook as notebooks

    notebooks.notebook(name, places(runs_dir=runs_dir), run=run, pack_dir=pack_dir, out=out, push=push)


@cli.command(name="submissions")
@click.argument("name")
@submissions_option
def submissions_command(name: str, submissions_dir: str | None) -> None:
    """The competition's submissions on Kaggle (status, public and private score) beside the run and CV of the
    local file that was uploaded; the scores are saved into that file's sidecar (compkit runs shows them).

    \b
    Example:
      compkit submissions plant-pathology
    """
    from compkit import pipeline

    pipeline.kaggle_submissions(name, places(submissions_dir=submissions_dir))


@cli.command(name="competitions")
def competitions_command() -> None:
    """List every installed competition: title, task, metric, Kaggle slug, demo and shipped recipes.

    \b
    Example:
      compkit competitions
    """
    from compkit import pipeline

    for line in pipeline.competition_table():
        console.echo(line)


@cli.command(name="plugins")
def plugins_command() -> None:
    """List plugins, versions and what they register (or why they failed).

    \b
    Example:
      compkit plugins
    """
    from compkit import pipeline

    for line in pipeline.plugin_report():
        console.echo(line)


def add_plugin_commands(group: click.Group) -> None:
    """Let each plugin add commands; a failing plugin, or one replacing a command, is recorded."""
    from compkit import plugins

    plugins.manager().add_commands(group)


def main() -> None:
    try:
        add_plugin_commands(cli)  # loads the plugins; a real Ctrl-C meanwhile still stops, quietly
    except KeyboardInterrupt:
        console.echo("interrupted", err=True)
        sys.exit(130)
    cli(prog_name="compkit")
