"""The per-avatar UNet of SyncTalk_2D and Ultralight-Digital-Human, state-dict compatible with both.

Both projects train one small network per avatar video: a UNet of MobileNetV2 inverted-residual blocks
(depthwise-separable convolutions) whose bottleneck is concatenated with an audio branch's output and fused.
This module reproduces, layer for layer and key for key:

* SyncTalk_2D ``unet_328.py`` ``Model(6, mode)`` (family ``synctalk2d-328``): 5 down/5 up stages on a
  320x320 input (the inner region of a 328x328 crop);
* SyncTalk_2D ``unet.py`` ``Model(6, mode)`` (family ``synctalk2d-160``): 4 down/4 up stages on 160x160
  (the inner region of a 168x168 crop);
* Ultralight-Digital-Human ``unet.py`` ``Model(6, mode)`` (family ``ultralight-160``): SyncTalk_2D's 160
  network with its own HuBERT and WeNet audio branches (fewer input channels: it takes a window of 8 video
  frames where SyncTalk_2D takes 16).

Module attribute names (``audio_model``, ``fuse_conv``, ``inc.inconv.0``, ``downN.maxpool_conv.0``,
``upN.conv``, ``outc``, ``double_conv``, ``conv``) are state-dict keys and must not be renamed; registration
order is key order. Ultralight renamed some keys in 2026-05 (no ``.0.`` level under ``inc.inconv`` and
``downN.maxpool_conv``); :func:`lipsync_tools.models.checkpoint.read_state_dict` maps those to the names
used here.

Tensor contract of :meth:`UNet.forward` (``n`` = 320 for ``synctalk2d-328``, 160 otherwise):

* ``image``: float32 ``(B, 6, n, n)`` in ``[0, 1]``: channels 0-2 are the reference crop, channels 3-5 the
  masked target crop, both BGR/255 (note: the reverse of Wav2Lip's order). The public inference scripts
  pass the *current* frame's unmasked crop as the reference;
* ``audio``: float32 ``(B, *audio_shape)``, see :data:`AUDIO_FEATURE_SHAPES`;
* returns float32 ``(B, 3, n, n)`` in ``[0, 1]`` (sigmoid output), BGR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lipsync_tools.errors import UsageError
from lipsync_tools.models.layers import RELU_GAIN, RESIDUAL_GAIN

IMAGE_CHANNELS = 6  # reference BGR (3) + masked target BGR (3)
INNER_MARGIN = 4  # the network sees crop[4:-4, 4:-4]

UNET_FAMILIES: dict[str, tuple[int, tuple[str, ...], str]] = {
    "synctalk2d-328": (328, ("ave", "hubert", "wenet"), "ave"),
    "synctalk2d-160": (160, ("ave", "hubert", "wenet"), "ave"),
    "ultralight-160": (160, ("hubert", "wenet"), "hubert"),
}
"""family -> (size, audio modes, default audio mode). ``size`` is the family's nominal size: the network
input is 320x320 for 328 (crop 328) and 160x160 for 160 (crop 168). SyncTalk_2D's scripts default to
``ave``, Ultralight's README to ``hubert``."""


@dataclass(frozen=True)
class _AudioBranchSpec:
    """The audio branch of one (project, audio mode): what differs between them is the first two blocks
    (input channels) and the stride of ``conv3``; everything after ``conv3`` is shared."""

    shape: tuple[int, int, int]  # per-frame network input (C, H, W)
    conv1_out: int
    conv2_out: int
    conv3_stride: tuple[int, int]


# Every branch ends at (512, 10, 10), the image bottleneck's size: conv3 brings H, W to 16x16, conv5
# (3x3, padding 3, stride 2) to 10x10.
_AUDIO_BRANCHES: dict[tuple[str, str], _AudioBranchSpec] = {
    # SyncTalk_2D: 16-frame windows. ave: 16 x 512-d AVE rows; hubert: 16 x (2 x 1024) HuBERT rows;
    # wenet: 16 x (16 x 512) WeNet rows. ave and hubert differ only in conv3's stride (no weights).
    ("synctalk2d", "ave"): _AudioBranchSpec((32, 16, 16), 64, 128, (1, 1)),
    ("synctalk2d", "hubert"): _AudioBranchSpec((32, 32, 32), 64, 128, (2, 2)),
    ("synctalk2d", "wenet"): _AudioBranchSpec((256, 16, 32), 256, 256, (1, 2)),
    # Ultralight: 8-frame windows of the same rows, hence half the input channels.
    ("ultralight", "hubert"): _AudioBranchSpec((16, 32, 32), 64, 128, (2, 2)),
    ("ultralight", "wenet"): _AudioBranchSpec((128, 16, 32), 256, 256, (1, 2)),
}

_CH = (32, 64, 128, 256, 512)  # the public ``ch`` list (their mobile variant halves it; not supported)

# (in, out) channels of the down stages and of the up stages (an up stage's input is the upsampled
# previous output concatenated with the matching down stage's input), then the output conv's input.
_STAGES: dict[int, tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...], int]] = {
    328: (
        ((_CH[0], _CH[0]), (_CH[0], _CH[1]), (_CH[1], _CH[2]), (_CH[2], _CH[3]), (_CH[3], _CH[4])),
        (
            (_CH[4], _CH[3] // 2),
            (_CH[3], _CH[2] // 2),
            (_CH[2], _CH[1] // 2),
            (_CH[1], _CH[0]),
            (_CH[1], _CH[0] // 2),
        ),
        _CH[0] // 2,
    ),
    160: (
        ((_CH[0], _CH[1]), (_CH[1], _CH[2]), (_CH[2], _CH[3]), (_CH[3], _CH[4])),
        ((_CH[4], _CH[3] // 2), (_CH[3], _CH[2] // 2), (_CH[2], _CH[1] // 2), (_CH[1], _CH[0])),
        _CH[0],
    ),
}


@dataclass(frozen=True, kw_only=True)
class UNetVariant:
    """One (family, audio mode) network: its sizes and the audio input it takes."""

    family: str
    audio_mode: str
    size: int  # nominal size, 328 or 160
    crop_size: int  # side of the face crop the inner region is cut from (328 or 168)
    input_size: int  # side of the network's image input and output (320 or 160)
    audio_shape: tuple[int, int, int]  # per-frame network audio input (C, H, W)


def _project(family: str) -> str:
    return family.split("-")[0]


def _variant(family: str, mode: str) -> UNetVariant:
    size = UNET_FAMILIES[family][0]
    input_size = 320 if size == 328 else 160
    return UNetVariant(
        family=family,
        audio_mode=mode,
        size=size,
        crop_size=input_size + 2 * INNER_MARGIN,
        input_size=input_size,
        audio_shape=_AUDIO_BRANCHES[(_project(family), mode)].shape,
    )


UNET_VARIANTS: dict[tuple[str, str], UNetVariant] = {
    (family, mode): _variant(family, mode)
    for family, (_, modes, _) in UNET_FAMILIES.items()
    for mode in modes
}
"""Every network this module builds, keyed by ``(family, audio_mode)``."""

AUDIO_FEATURE_SHAPES: dict[tuple[str, str], tuple[int, int, int]] = {
    key: variant.audio_shape for key, variant in UNET_VARIANTS.items()
}
"""``(family, audio_mode)`` -> per-frame network audio input ``(C, H, W)``. Keyed by family, not by size:
SyncTalk_2D's and Ultralight's 160 networks take different ``hubert``/``wenet`` shapes."""


def resolve_variant(*, size: int | None = None, audio_mode: str, family: str | None = None) -> UNetVariant:
    """The :class:`UNetVariant` for a family (or a size) and an audio mode.

    Without ``family``, ``size`` picks it: 328 is ``synctalk2d-328``; 160 is ``synctalk2d-160`` for ``ave``
    and ``ultralight-160`` for ``hubert``/``wenet`` (the networks those names usually mean; pass
    ``family="synctalk2d-160"`` for SyncTalk_2D's own 160 HuBERT/WeNet networks). Raises
    :class:`UsageError` for an unknown family, size or mode, or a size that is not the family's.
    """
    if family is None:
        if size == 328:
            family = "synctalk2d-328"
        elif size == 160:
            family = "synctalk2d-160" if audio_mode == "ave" else "ultralight-160"
        else:
            raise UsageError(f"UNet size must be 328 or 160, got {size!r}")
    if family not in UNET_FAMILIES:
        raise UsageError(f"unknown UNet family {family!r}; known: {', '.join(UNET_FAMILIES)}")
    family_size, modes, _ = UNET_FAMILIES[family]
    if size is not None and size != family_size:
        raise UsageError(f"family {family} has size {family_size}, not {size}")
    if audio_mode not in modes:
        raise UsageError(f"family {family} takes audio modes {', '.join(modes)}; got {audio_mode!r}")
    return UNET_VARIANTS[(family, audio_mode)]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (x ``expand``), BN, ReLU, 3x3 depthwise (``stride``), BN, ReLU, 1x1
    project, BN (no ReLU: a linear bottleneck), plus the input when ``residual``.

    ``(B, cin, H, W)`` -> ``(B, cout, H / stride, W / stride)``. Keys ``conv.{0,1,3,4,6,7}.*``.
    """

    def __init__(
        self, cin: int, cout: int, *, stride: int = 1, residual: bool = False, expand: int = 2
    ) -> None:
        super().__init__()
        if residual and (cin != cout or stride != 1):
            raise UsageError(f"a residual block needs cin == cout and stride 1, got {cin}->{cout}/{stride}")
        hidden = cin * expand
        self.residual = residual
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.residual else out

    def init_gains(self) -> dict[str, float]:
        return {"conv.0": RELU_GAIN, "conv.3": RELU_GAIN, "conv.6": RESIDUAL_GAIN if self.residual else 1.0}


class DoubleInvertedResidual(nn.Module):
    """Two inverted residuals: ``cin -> cout`` (with ``stride``), then a residual ``cout -> cout``.

    The public ``DoubleConvDW``; keys ``double_conv.{0,1}.conv.*``.
    """

    def __init__(self, cin: int, cout: int, *, stride: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            InvertedResidual(cin, cout, stride=stride),
            InvertedResidual(cout, cout, residual=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.double_conv(x)
        return out


class InConv(nn.Module):
    """The input block: one inverted residual ``6 -> 32`` at full resolution (keys ``inconv.0.conv.*``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.inconv = nn.Sequential(InvertedResidual(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inconv(x)
        return out


class Down(nn.Module):
    """Halve the resolution: a :class:`DoubleInvertedResidual` whose depthwise conv has stride 2 (no max
    pooling, despite the public key name ``maxpool_conv.0.double_conv.*``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(DoubleInvertedResidual(cin, cout, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.maxpool_conv(x)
        return out


class Up(nn.Module):
    """Double the resolution (bilinear, ``align_corners=True``), concatenate ``[upsampled, skip]`` on
    channels, then a :class:`DoubleInvertedResidual` (keys ``conv.double_conv.*``).

    The public block also pads the upsampled map to the skip's size; with the fixed input sizes this
    network accepts, the two always agree, so there is nothing to pad.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = DoubleInvertedResidual(cin, cout, stride=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        out: torch.Tensor = self.conv(torch.cat((x, skip), dim=1))
        return out


class OutConv(nn.Module):
    """A 1x1 convolution to 3 channels, with bias (keys ``conv.weight``, ``conv.bias``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class AudioBranch(nn.Module):
    """Audio features ``(B, *spec.shape)`` -> ``(B, 512, 10, 10)``: public ``AudioConv{Ave,Hubert,Wenet}``.

    conv1, conv2: inverted residuals to 128 (ave/hubert) or 256 (wenet) channels; conv3: 3x3 conv to 256
    with the mode's stride, BN, ReLU; conv4: residual; conv5: 3x3 conv to 512, padding 3, stride 2, BN, ReLU;
    conv6, conv7: residuals.
    """

    def __init__(self, spec: _AudioBranchSpec) -> None:
        super().__init__()
        cin = spec.shape[0]
        self.conv1 = InvertedResidual(cin, spec.conv1_out, residual=cin == spec.conv1_out)
        self.conv2 = InvertedResidual(
            spec.conv1_out, spec.conv2_out, residual=spec.conv1_out == spec.conv2_out
        )
        self.conv3 = nn.Conv2d(spec.conv2_out, _CH[3], kernel_size=3, padding=1, stride=spec.conv3_stride)
        self.bn3 = nn.BatchNorm2d(_CH[3])
        self.conv4 = InvertedResidual(_CH[3], _CH[3], residual=True)
        self.conv5 = nn.Conv2d(_CH[3], _CH[4], kernel_size=3, padding=3, stride=2)
        self.bn5 = nn.BatchNorm2d(_CH[4])
        self.conv6 = InvertedResidual(_CH[4], _CH[4], residual=True)
        self.conv7 = InvertedResidual(_CH[4], _CH[4], residual=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.conv4(x)
        x = F.relu(self.bn5(self.conv5(x)))
        out: torch.Tensor = self.conv7(self.conv6(x))
        return out

    def init_gains(self) -> dict[str, float]:
        return {"conv3": RELU_GAIN, "conv5": RELU_GAIN}


def build_audio_branch(family: str, audio_mode: str) -> AudioBranch:
    """The audio branch (``UNet.audio_model``) of ``family`` for ``audio_mode``.

    Raises :class:`UsageError` for an unknown family or mode.
    """
    variant = resolve_variant(audio_mode=audio_mode, family=family)
    return AudioBranch(_AUDIO_BRANCHES[(_project(variant.family), variant.audio_mode)])


class UNet(nn.Module):
    """The SyncTalk_2D / Ultralight UNet; see the module docstring for the tensor contract.

    ``UNet(size=328, audio_mode="ave")`` is SyncTalk_2D's ``unet_328.Model(6, "ave")``; ``family`` picks
    between networks of the same size (see :func:`resolve_variant`). Build it empty and fill it with
    :func:`lipsync_tools.models.checkpoint.load_unet` or :func:`~lipsync_tools.models.checkpoint.random_unet`;
    call it in ``eval()`` mode (the batch norms must use their running statistics). Raises
    :class:`UsageError` for an unknown size, family or mode.
    """

    def __init__(self, *, size: int | None = None, audio_mode: str, family: str | None = None) -> None:
        super().__init__()
        variant = resolve_variant(size=size, audio_mode=audio_mode, family=family)
        self.variant = variant
        self.family = variant.family
        self.audio_mode = variant.audio_mode
        self.size = variant.size
        self.crop_size = variant.crop_size
        self.input_size = variant.input_size
        self.audio_shape = variant.audio_shape
        self.architecture = f"{variant.family}-{variant.audio_mode}"  # a token: ONNX cache file names use it
        self.display_name = f"{variant.family} ({variant.audio_mode})"  # for messages

        downs, ups, out_in = _STAGES[variant.size]
        # Registration order is the public state-dict order: audio_model, fuse_conv, inc, down*, up*, outc.
        self.audio_model = build_audio_branch(variant.family, variant.audio_mode)
        self.fuse_conv = nn.Sequential(
            DoubleInvertedResidual(2 * _CH[4], _CH[4], stride=1),
            DoubleInvertedResidual(_CH[4], _CH[3], stride=1),
        )
        self.inc = InConv(IMAGE_CHANNELS, _CH[0])
        self._down_names = tuple(f"down{i + 1}" for i in range(len(downs)))
        self._up_names = tuple(f"up{i + 1}" for i in range(len(ups)))
        for name, (cin, cout) in zip(self._down_names, downs, strict=True):
            self.add_module(name, Down(cin, cout))
        for name, (cin, cout) in zip(self._up_names, ups, strict=True):
            self.add_module(name, Up(cin, cout))
        self.outc = OutConv(out_in, 3)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Generate the inner region of the crop.

        ``image`` float32 ``(B, 6, n, n)`` (reference BGR/255, then masked target BGR/255); ``audio``
        float32 ``(B, *audio_shape)``. Returns float32 ``(B, 3, n, n)`` BGR in ``[0, 1]``. The argument
        order (image first) follows the public model. Raises :class:`UsageError` for wrong shapes.
        """
        if not torch.jit.is_tracing():  # traced shapes are symbolic; a Python check would warn and bake in
            self._check_inputs(image, audio)
        skips: list[torch.Tensor] = []
        x = self.inc(image)
        for name in self._down_names:
            skips.append(x)
            x = getattr(self, name)(x)
        x = self.fuse_conv(torch.cat((x, self.audio_model(audio)), dim=1))
        for name in self._up_names:
            x = getattr(self, name)(x, skips.pop())
        return torch.sigmoid(self.outc(x))

    def _check_inputs(self, image: torch.Tensor, audio: torch.Tensor) -> None:
        n = self.input_size
        if image.dim() != 4 or tuple(image.shape[1:]) != (IMAGE_CHANNELS, n, n) or image.shape[0] < 1:
            raise UsageError(
                f"{self.display_name} image input must have shape (B, {IMAGE_CHANNELS}, {n}, {n}), "
                f"got {tuple(image.shape)}"
            )
        if audio.dim() != 4 or tuple(audio.shape) != (image.shape[0], *self.audio_shape):
            shape = ", ".join(map(str, self.audio_shape))
            raise UsageError(
                f"{self.display_name} audio input must have shape (B, {shape}) with B = {image.shape[0]} "
                f"as for the image, got {tuple(audio.shape)}"
            )
