"""Building blocks shared by the model families, and deterministic random weights for any of them.

* :class:`ConvBlock` and :class:`ConvTransposeBlock` are the ``Conv2d``/``Conv2dTranspose`` blocks of the
  public Wav2Lip code; their attribute names (``conv_block.0``, ``conv_block.1``) are state-dict keys.
* :data:`WAV2LIP_AUDIO_ENCODER` is Wav2Lip's audio encoder as a layer table. SyncTalk_2D's AVE audio
  encoder is the same network (same layers, same key names), so both :mod:`.wav2lip` and :mod:`.ave` build
  it from here.
* :func:`random_init` fills a network with weights drawn from NumPy's PCG64 stream, so the same seed gives
  the same bits on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from lipsync_tools.errors import UsageError

ModuleT = TypeVar("ModuleT", bound=nn.Module)

RELU_GAIN = float(np.sqrt(2.0))
"""He gain, for a layer whose output goes through a ReLU."""

RESIDUAL_GAIN = 0.5
"""Gain of the last layer of a residual branch: it keeps activations from growing block after block when
the batch norms (random running statistics, no real normalisation) cannot rein them in."""


@runtime_checkable
class HasInitGains(Protocol):
    """A block that tells :func:`random_init` the gain of some of its layers.

    ``init_gains()`` maps submodule names relative to the block (``"conv_block.0"``) to a gain; layers it
    does not name get gain 1.
    """

    def init_gains(self) -> dict[str, float]: ...


class ConvBlock(nn.Module):
    """Conv2d, BatchNorm2d, optional identity residual, then ReLU.

    Attribute names match the public ``Conv2d`` block: ``conv_block.0`` is the convolution and
    ``conv_block.1`` the batch norm, so keys read ``...conv_block.0.weight``,
    ``...conv_block.1.running_mean`` and so on. Input ``(B, cin, H, W)``, output ``(B, cout, H', W')``.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)

    def init_gains(self) -> dict[str, float]:
        return {"conv_block.0": RESIDUAL_GAIN if self.residual else RELU_GAIN}


class ConvTransposeBlock(nn.Module):
    """ConvTranspose2d, BatchNorm2d, ReLU (the public ``Conv2dTranspose`` block, same key names)."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, output_padding: int = 0
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


class ConvSpec(NamedTuple):
    """One :class:`ConvBlock` row of a layer table: channels in/out, kernel, stride, padding, residual."""

    cin: int
    cout: int
    k: int
    s: int | tuple[int, int]
    p: int
    res: bool = False


class ConvTransposeSpec(NamedTuple):
    """One :class:`ConvTransposeBlock` row (output_padding is 1 exactly when the stride is 2)."""

    cin: int
    cout: int
    k: int
    s: int
    p: int
    out_pad: int = 0


def build_block(row: ConvSpec | ConvTransposeSpec) -> nn.Module:
    """The block a layer-table row describes."""
    if isinstance(row, ConvTransposeSpec):
        return ConvTransposeBlock(row.cin, row.cout, row.k, row.s, row.p, row.out_pad)
    return ConvBlock(row.cin, row.cout, row.k, row.s, row.p, row.res)


# Wav2Lip's audio encoder (models/wav2lip.py of Rudrabha/Wav2Lip; SyncTalk_2D's utils.AudioEncoder is the
# same). Spatial sizes in the comments are for an 80x16 mel window.
WAV2LIP_AUDIO_ENCODER: tuple[ConvSpec, ...] = (
    ConvSpec(1, 32, 3, 1, 1),  # 80x16
    *[ConvSpec(32, 32, 3, 1, 1, True)] * 2,
    ConvSpec(32, 64, 3, (3, 1), 1),  # 27x16
    *[ConvSpec(64, 64, 3, 1, 1, True)] * 2,
    ConvSpec(64, 128, 3, 3, 1),  # 9x6
    *[ConvSpec(128, 128, 3, 1, 1, True)] * 2,
    ConvSpec(128, 256, 3, (3, 2), 1),  # 3x3
    ConvSpec(256, 256, 3, 1, 1, True),
    ConvSpec(256, 512, 3, 1, 0),  # 1x1
    ConvSpec(512, 512, 1, 1, 0),
)
"""Mel ``(B, 1, 80, 16)`` in, ``(B, 512, 1, 1)`` out."""


def wav2lip_audio_encoder() -> nn.Sequential:
    """A fresh :data:`WAV2LIP_AUDIO_ENCODER` (keys ``0.conv_block.0.weight`` ... ``12.conv_block.1.*``)."""
    return nn.Sequential(*(build_block(row) for row in WAV2LIP_AUDIO_ENCODER))


def check_seed(seed: object) -> int:
    """Return ``seed`` if it is a non-negative ``int``; raise :class:`UsageError` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"random model seed must be a non-negative integer, got {seed!r}")
    return seed


def random_init(model: nn.Module, seed: int) -> None:
    """Fill every parameter and batch-norm statistic of ``model`` in place from a seeded NumPy stream.

    The same ``seed`` gives bit-identical tensors on every machine: values are uniform doubles from NumPy's
    PCG64 (not torch's RNG, whose output depends on the CPU's vector path), scaled in float64, then rounded
    to float32. Modules are visited in ``named_modules()`` order:

    * convolutions (any dimension, transposed, grouped or depthwise) and ``nn.Linear``: weights uniform in
      ``±gain * sqrt(3 / fan_in)`` (``fan_in`` = input channels per group times the kernel taps; for a
      transposed convolution divided by the stride's product, since each output sees only that share of the
      taps); biases uniform in ``±0.1``. ``gain`` is 1 unless a block implementing :class:`HasInitGains`
      names the layer (He gain before a ReLU, a smaller gain closing a residual branch);
    * batch norms: weight in ``[0.8, 1.2]``, bias in ``±0.1``, running mean in ``±0.1`` and running variance
      in ``[0.5, 1.5]``, so eval-mode outputs are not trivially flat; ``num_batches_tracked`` is set to 0.

    Every parameter and batch-norm buffer is written, so ``model`` may come from :func:`uninitialised`.

    Such weights move pixels in an input-dependent way but do not lip-sync: they are for demos, tests and
    benchmarks. Raises :class:`UsageError` for a bad ``seed`` and when ``model`` holds parameters of a layer
    type this function does not know (it would otherwise keep torch's non-reproducible initialisation).
    """
    rng = np.random.Generator(np.random.PCG64(check_seed(seed)))

    def uniform(shape: torch.Size | int, low: float, high: float) -> torch.Tensor:
        values = low + (high - low) * rng.random(shape)
        return torch.from_numpy(values.astype(np.float32))

    gains: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, HasInitGains):
            prefix = f"{name}." if name else ""
            gains.update({prefix + child: gain for child, gain in module.init_gains().items()})

    filled: set[int] = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, _ConvNd | nn.Linear):
                bound = gains.get(name, 1.0) * float(np.sqrt(3.0 / _fan_in(module)))
                module.weight.copy_(uniform(module.weight.shape, -bound, bound))
                filled.add(id(module.weight))
                if module.bias is not None:
                    module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
                    filled.add(id(module.bias))
            elif isinstance(module, _BatchNorm):
                n = module.num_features
                if module.weight is not None and module.bias is not None:
                    module.weight.copy_(uniform(n, 0.8, 1.2))
                    module.bias.copy_(uniform(n, -0.1, 0.1))
                    filled.update((id(module.weight), id(module.bias)))
                if module.running_mean is not None and module.running_var is not None:
                    module.running_mean.copy_(uniform(n, -0.1, 0.1))
                    module.running_var.copy_(uniform(n, 0.5, 1.5))
                if module.num_batches_tracked is not None:
                    module.num_batches_tracked.zero_()
    left = [name for name, p in model.named_parameters() if id(p) not in filled]
    if left:
        raise UsageError(
            f"random_init only fills convolution, linear and batch-norm layers; {type(model).__name__} has "
            f"{len(left)} other parameter(s), first {left[0]!r}"
        )


def uninitialised(factory: Callable[[], ModuleT]) -> ModuleT:
    """``factory()`` built on the meta device, then given uninitialised CPU storage.

    Skips torch's default initialisation (a third of a second for a 36 M-parameter network) when every
    tensor is about to be overwritten anyway, by a strict ``load_state_dict`` or by :func:`random_init`.
    Until then the tensors hold arbitrary values.
    """
    with torch.device("meta"):
        model = factory()
    return model.to_empty(device="cpu")


def _fan_in(module: _ConvNd | nn.Linear) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    fan_in = module.in_channels // module.groups * int(np.prod(module.kernel_size))
    if module.transposed:
        fan_in //= int(np.prod(module.stride))  # each output sees 1/stride² of the taps
    return max(fan_in, 1)
