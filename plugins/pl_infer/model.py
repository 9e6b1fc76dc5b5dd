"""LungNet: a tiny 2D U-Net that predicts a lung mask from axial CT slices.

The network sees one slice at a time, resampled to :data:`MODEL_SIZE`²
pixels, with HU scaled by :func:`normalise_hu`; it returns one logit per
pixel (lung or not). Three poolings and a dilated bottleneck give it a
receptive field of most of the slice, which it needs: emphysema and the air
around the body have nearly the same HU and differ only by their context.

The weights ship in the package (``weights/lungnet.pt``, about 200 kB) with a
manifest (``weights/lungnet.json``) written by :mod:`pl_infer.train`; they are
never downloaded. :func:`weights_checksum` is the sha256 of the parameters
themselves (names, dtypes, shapes and bytes in a fixed order), so it does not
depend on how the file was serialised.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: The in-plane size (pixels) slices are resampled to before the network.
MODEL_SIZE = 96
MODEL_NAME = "lungnet-unet2d"
WEIGHTS_FILE = "lungnet.pt"
MANIFEST_FILE = "lungnet.json"


class ModelError(Exception):
    """The shipped weights are missing, corrupt or do not match their manifest."""


def normalise_hu(hu: torch.Tensor) -> torch.Tensor:
    """HU to the network's input scale: -1000 → -1, 0 → 0, clipped to [-1.2, 1.5]."""
    return torch.clamp(hu / 1000.0, -1.2, 1.5)


def to_model_size(batch: torch.Tensor) -> torch.Tensor:
    """Resample (N, C, H, W) slices to :data:`MODEL_SIZE`² (bilinear, antialiased).

    Training and inference both go through this, so the network always sees
    slices smoothed the same way whatever the scanner's matrix.
    """
    return F.interpolate(
        batch, size=(MODEL_SIZE, MODEL_SIZE), mode="bilinear", antialias=True, align_corners=False
    )


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    """Two 3×3 convolutions with ReLU (padding keeps the size)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation),
        nn.ReLU(inplace=True),
    )


class LungNet(nn.Module):
    """A three-level 2D U-Net: (N, 1, H, W) normalised HU → (N, 1, H, W) logits.

    H and W must be multiples of 8 (the three poolings).
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1 = _block(1, w)
        self.enc2 = _block(w, 2 * w)
        self.enc3 = _block(2 * w, 4 * w)
        # Dilated at 1/8 resolution: the context that tells a lung from outside air.
        self.bottom = _block(4 * w, 4 * w, dilation=2)
        self.dec3 = _block(8 * w, 2 * w)
        self.dec2 = _block(4 * w, w)
        self.dec1 = _block(2 * w, w)
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the lung class for each pixel."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        b = self.bottom(F.max_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([F.interpolate(b, scale_factor=2.0), e3], dim=1))
        d2 = self.dec2(torch.cat([F.interpolate(d3, scale_factor=2.0), e2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], dim=1))
        return self.head(d1)  # type: ignore[no-any-return]


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of a state dict's tensors: name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def weights_dir() -> Path:
    """The package directory holding the shipped weights and manifest."""
    return Path(str(resources.files("pl_infer") / "weights"))


def read_manifest(directory: Path | None = None) -> dict[str, Any]:
    """The weights manifest (training settings, checksum, validation Dice).

    Raises ``ModelError`` when it is missing or not JSON.
    """
    path = (directory or weights_dir()) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the weights manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: the manifest is not a JSON object")
    return data


def load_model(device: torch.device, directory: Path | None = None) -> tuple[LungNet, str]:
    """The shipped LungNet in eval mode on ``device``, and its weights checksum.

    Raises ``ModelError`` when the weights cannot be read or their checksum
    differs from the manifest's (a corrupt or stale file).
    """
    directory = directory or weights_dir()
    manifest = read_manifest(directory)
    path = directory / WEIGHTS_FILE
    try:
        # weights_only: the file is a plain state dict, never arbitrary pickles.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot load the weights {path}: {exc}") from exc
    checksum = weights_checksum(state)
    if checksum != manifest.get("checksum"):
        raise ModelError(
            f"{path}: weights checksum {checksum} differs from the manifest's "
            f"{manifest.get('checksum')}"
        )
    model = LungNet(width=int(manifest.get("width", 8)))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path}: the weights do not fit LungNet: {exc}") from exc
    return model.to(device).eval(), checksum


@torch.inference_mode()
def predict_volume(
    model: LungNet,
    volume: torch.Tensor,
    device: torch.device,
    batch_size: int = 16,
    threshold: float = 0.5,
) -> torch.Tensor:
    """The lung mask (bool, on the CPU) of an (X, Y, Z) HU volume, slice by slice along Z.

    Each slice is resampled to :data:`MODEL_SIZE`² (:func:`to_model_size`),
    and the probabilities back to X×Y (bilinear) before the
    ``threshold``.
    """
    x_size, y_size, z_size = volume.shape
    out = torch.empty((x_size, y_size, z_size), dtype=torch.bool)
    for start in range(0, z_size, batch_size):
        stop = min(start + batch_size, z_size)
        # (X, Y, Zb) → (Zb, 1, X, Y)
        batch = volume[:, :, start:stop].permute(2, 0, 1).unsqueeze(1).to(device, torch.float32)
        batch = normalise_hu(batch)
        prob = torch.sigmoid(model(to_model_size(batch)))
        full = F.interpolate(prob, size=(x_size, y_size), mode="bilinear", align_corners=False)
        out[:, :, start:stop] = (full[:, 0] > threshold).permute(1, 2, 0).cpu()
    return out
