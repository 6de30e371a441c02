"""``python -m training train --arch resnet --data DIR --out DIR``: train, export, write the manifest.

The output folder can be ``SIGHTLINE_MODEL_MANIFEST_DIR`` itself: it receives ``<name>.onnx``
and ``<name>.json`` and nothing else (every ``*.json`` there is read as a manifest). Then
``SIGHTLINE_MODEL_NAME=<name> sightline models prepare`` checks the model contract.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from models.errors import ModelLibraryError
from training.architectures import ARCHITECTURES
from training.recipe import Hyperparameters, TrainingSummary, train


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "train",
        help="train one seed architecture on a labelled folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--arch", required=True, choices=ARCHITECTURES)
    run.add_argument("--data", required=True, type=Path, help="folder with one sub-folder of images per class")
    run.add_argument("--out", required=True, type=Path, help="folder for <name>.onnx and <name>.json")
    run.add_argument("--epochs", type=non_negative_int, default=10, help="passes over the training pictures")
    run.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimiser steps")
    run.add_argument("--width", type=positive_int, default=16, help="channels of the first stage")
    run.add_argument("--input-size", type=positive_int, default=64, help="square input side, a multiple of 16")
    run.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1: grey (L), 3: RGB")
    run.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate")
    run.add_argument("--batch-size", type=positive_int, default=16, help="pictures per optimiser step")
    run.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and the batches")
    run.add_argument("--labels", nargs="+", default=(), help="output order; default: sub-folder names, sorted")
    run.add_argument("--tumour-labels", nargs="+", default=(), help="default: every label but the no-tumour one")
    run.add_argument("--no-tumour-label", default="notumor", help="ignored when no class has this name")
    run.add_argument("--name", default=None, help="model name (default sightline-<arch>)")
    run.add_argument("--version", default="0.1.0", help="model version in the manifest")
    return root


def run_training(args: argparse.Namespace) -> TrainingSummary:
    hyper = Hyperparameters(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, max_steps=args.max_steps
    )
    return train(
        args.arch,
        args.data,
        args.out,
        hyper=hyper,
        width=args.width,
        input_size=args.input_size,
        channels=args.channels,
        labels=args.labels,
        tumour_labels=args.tumour_labels,
        no_tumour_label=args.no_tumour_label,
        name=args.name,
        version=args.version,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 with the manifest written; 1 with one line naming what was refused."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run_training(args)
    except (ModelLibraryError, ValueError) as exc:
        print(f"python -m training: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {summary.manifest_path} and {summary.onnx_path} in {summary.seconds:.1f} s")
    print(
        f"kept epoch {summary.best_epoch}: validation accuracy {summary.validation_accuracy:.3f} "
        f"({summary.validation_count} pictures; ONNX {summary.onnx_validation_accuracy:.3f}), "
        f"temperature {summary.temperature:g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
