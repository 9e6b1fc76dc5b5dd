"""Train LungNet on synthetic CT phantoms and write the weights pl-infer ships.

Run from the repository root (3 to 6 minutes on one shared CPU core)::

    PYTHONPATH=plugins python -m pl_infer.train --out plugins/pl_infer/weights

It writes ``lungnet.pt`` (the state dict) and ``lungnet.json`` (the
manifest: settings, torch version, weights checksum, validation Dice).

Training is deterministic: the phantoms come from seeded numpy generators,
torch is seeded, runs on one CPU thread with deterministic algorithms, so the
same torch build on the same kind of CPU gives bit-identical weights (the
checksum in the manifest); ``tests/sdk/test_infer.py`` retrains and compares.
A different CPU instruction set or torch version may change the last bits of
the floating point sums, and with them the checksum, not the quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from pl_infer.model import (
    MANIFEST_FILE,
    MODEL_NAME,
    MODEL_SIZE,
    WEIGHTS_FILE,
    LungNet,
    normalise_hu,
    to_model_size,
    weights_checksum,
)
from pl_infer.phantom import dice, random_slice

#: Matrix sizes phantoms are drawn at before resampling to MODEL_SIZE.
RENDER_SIZES = (64, 96, 128, 192, 256)


def make_batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random phantom slices at the model's size: (inputs, truth), both (n, 1, S, S)."""
    size = int(rng.choice(RENDER_SIZES))
    images, truths = zip(*(random_slice(rng, size) for _ in range(n)), strict=True)
    x = normalise_hu(torch.from_numpy(np.stack(images)).unsqueeze(1))
    y = torch.from_numpy(np.stack(truths).astype(np.float32)).unsqueeze(1)
    # Truth goes through the same resampling, then back to a hard mask.
    return to_model_size(x), (to_model_size(y) > 0.5).float()


def loss_fn(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss (Dice keeps small lungs from vanishing)."""
    bce = F.binary_cross_entropy_with_logits(logits, truth)
    prob = torch.sigmoid(logits)
    inter = (prob * truth).sum()
    soft_dice = (2 * inter + 1.0) / (prob.sum() + truth.sum() + 1.0)
    return bce + (1.0 - soft_dice)


def validation_dice(model: LungNet, seed: int, n: int = 64) -> float:
    """Dice of the thresholded predictions over ``n`` held-out phantom slices."""
    rng = np.random.default_rng(seed)
    x, y = make_batch(rng, n)
    with torch.inference_mode():
        pred = torch.sigmoid(model.eval()(x)) > 0.5
    return dice(pred.numpy(), y.bool().numpy())


def train(
    *, seed: int = 7, steps: int = 500, batch: int = 8, lr: float = 3e-3, width: int = 8
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train LungNet from scratch; return (state dict, manifest)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    model = LungNet(width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # Cosine decay: large steps early, fine ones at the end for stable weights.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    started = time.perf_counter()
    loss = torch.tensor(0.0)
    for _step in range(steps):
        x, y = make_batch(rng, batch)
        model.train()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    manifest: dict[str, Any] = {
        "model": MODEL_NAME,
        "input_size": MODEL_SIZE,
        "width": width,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "torch_version": torch.__version__,
        "final_loss": round(float(loss.detach()), 5),
        "validation_dice": round(validation_dice(model, seed + 1000), 4),
        "training_seconds": round(time.perf_counter() - started, 1),
        "checksum": weights_checksum(state),
    }
    return state, manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train and write ``lungnet.pt`` and ``lungnet.json`` into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="directory for the weights")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args(argv)
    state, manifest = train(seed=args.seed, steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out / WEIGHTS_FILE)
    (args.out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
