"""The registry of model families, and the few calls that turn a family name into a network.

``--family NAME`` everywhere looks names up here. Adding a family is one entry in :data:`MODEL_FAMILIES`
(and, for a new architecture, a network module behind a ``"module:function"`` string); nothing else
hard-codes a family. See ``docs/models.md`` for what each family is and where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lipsync_tools._registry import load_attr
from lipsync_tools.errors import CheckpointError, UsageError
from lipsync_tools.models.family import AudioMode, ModelFamily

if TYPE_CHECKING:
    from torch import nn

    from lipsync_tools.models.checkpoint import CheckpointSource

DEFAULT_FAMILY = "wav2lip"

_MEL = AudioMode(
    name="mel",
    row_shape=(80, 16),
    network_shape=(1, 80, 16),
    computable=True,
    description="Wav2Lip's normalised log-mel, one 16-column (200 ms) window per video frame",
)
_AVE = AudioMode(
    name="ave",
    row_shape=(512,),
    network_shape=(32, 16, 16),
    computable=True,
    description="SyncTalk_2D's AVE encoder: 512 values per video frame from its Wav2Lip mel window; "
    "16 rows [i-8, i+8) per frame",
)
_HUBERT_16 = AudioMode(
    name="hubert",
    row_shape=(2, 1024),
    network_shape=(32, 32, 32),
    computable=False,
    description="HuBERT-large hidden states, two 50 Hz frames per 25 fps video frame; 16 rows per frame; "
    "precomputed .npy only",
)
_WENET_16 = AudioMode(
    name="wenet",
    row_shape=(16, 512),
    network_shape=(256, 16, 32),
    computable=False,
    description="WeNet encoder output; 16 rows per frame; precomputed .npy only",
)
_HUBERT_8 = AudioMode(
    name="hubert",
    row_shape=(2, 1024),
    network_shape=(16, 32, 32),
    computable=False,
    description="HuBERT-large hidden states, two per video frame; 8 rows [i-4, i+4) per frame (Ultralight); "
    "precomputed .npy only",
)
_WENET_8 = AudioMode(
    name="wenet",
    row_shape=(16, 512),
    network_shape=(128, 16, 32),
    computable=False,
    description="WeNet encoder output; 8 rows per frame (Ultralight); precomputed .npy only",
)

_UNET_SOURCE = "SyncTalk_2D (ZiqiaoPeng/SyncTalk_2D), per avatar"

def _unet_family(
    name: str,
    title: str,
    source: str,
    *,
    crop_size: int,
    hidden_rect: tuple[int, int, int, int],
    audio_modes: tuple[AudioMode, ...],
) -> ModelFamily:
    """A per-avatar UNet family (SyncTalk_2D, Ultralight): SyncTalk_2D's box, a 4-pixel margin around the
    network's image, ``[reference, masked]`` input, the first audio mode as the default."""
    return ModelFamily(
        name=name, title=title, source=source, crop_size=crop_size, inner_margin=4, box_rule="synctalk2d",
        hidden_rect=hidden_rect, reference_first=True, audio_modes=audio_modes,
        default_audio_mode=audio_modes[0].name, per_avatar=True, network="lipsync_tools.models.unet:UNet",
    )


MODEL_FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily(
            name="wav2lip",
            title="Wav2Lip-96 (one public network for every face)",
            source="Wav2Lip (Rudrabha/Wav2Lip): wav2lip.pth, wav2lip_gan.pth",
            crop_size=96,
            inner_margin=0,
            box_rule="padded",
            hidden_rect=None,
            reference_first=False,
            audio_modes=(_MEL,),
            default_audio_mode="mel",
            per_avatar=False,
            network="lipsync_tools.models.wav2lip:Wav2Lip",
            image_first=False,
            onnx_names=("face", "mel", "crop"),
        ),
        _unet_family(
            "synctalk2d-328", "SyncTalk_2D UNet-328 (per avatar)", f"{_UNET_SOURCE}, unet_328.py",
            crop_size=328, hidden_rect=(5, 5, 310, 305), audio_modes=(_AVE, _HUBERT_16, _WENET_16),
        ),
        _unet_family(
            "synctalk2d-160", "SyncTalk_2D UNet-160 (per avatar)", f"{_UNET_SOURCE}, unet.py",
            crop_size=168, hidden_rect=(5, 5, 150, 145), audio_modes=(_AVE, _HUBERT_16, _WENET_16),
        ),
        _unet_family(
            "ultralight-160",
            "Ultralight-Digital-Human UNet-160 (per avatar; LiveTalking's ultralight avatars)",
            "Ultralight-Digital-Human (anliyuan/Ultralight-Digital-Human), unet.py, per avatar",
            crop_size=168, hidden_rect=(5, 5, 150, 145), audio_modes=(_HUBERT_8, _WENET_8),
        ),
    )
}


def family_names() -> list[str]:
    """Registered family names, the default first."""
    return sorted(MODEL_FAMILIES, key=lambda name: (name != DEFAULT_FAMILY, name))


def get_family(name: str | None) -> ModelFamily:
    """The family called ``name`` (``None``: :data:`DEFAULT_FAMILY`); :class:`UsageError` if unknown."""
    family = MODEL_FAMILIES.get(name or DEFAULT_FAMILY)
    if family is None:
        raise UsageError(f"unknown model family {name!r}; choose one of: {', '.join(family_names())}")
    return family


@dataclass(frozen=True, kw_only=True)
class LoadedNetwork:
    """A network ready to run: its family, audio mode, the torch module, and what it is."""

    family: ModelFamily
    audio_mode: AudioMode
    module: Any  # torch.nn.Module; Any keeps torch out of this module's import
    source: str
    is_random: bool


def random_network(family: ModelFamily, audio_mode: str | None, seed: int) -> LoadedNetwork:
    """Deterministic random weights of ``family`` (NOT lip-sync: demos, tests, benchmarks)."""
    mode = family.audio_mode(audio_mode)
    from lipsync_tools.models import checkpoint

    module: nn.Module
    if family.name == "wav2lip":
        module = checkpoint.random_wav2lip(seed)
    else:
        module = checkpoint.random_unet(family.name, mode.name, seed)
    return LoadedNetwork(family=family, audio_mode=mode, module=module, source=f"seed {seed}", is_random=True)


def load_network(
    source: CheckpointSource,
    *,
    family: str | None = None,
    audio_mode: str | None = None,
    name: str | None = None,
) -> LoadedNetwork:
    """Load a checkpoint strictly; its family is detected from its keys and shapes unless ``family`` is given.

    A checkpoint of another family than ``family`` is refused naming the family it is. Audio modes that
    share every shape (SyncTalk_2D's ave and hubert) cannot be detected: ``audio_mode`` then defaults to
    the family's default. Raises :class:`CheckpointError`, :class:`InputNotFoundError`, :class:`UsageError`.
    """
    from lipsync_tools.models import checkpoint

    label = name or (str(source) if not isinstance(source, bytes | dict) else "<checkpoint>")
    state = checkpoint.read_state_dict(source, name=label)
    kind = checkpoint.detect_network(state, label=label)
    if family is not None and kind.family != family:
        raise CheckpointError(
            f"{label} is a {kind.family} checkpoint, not {family}: pass --family {kind.family} "
            "(or leave --family out to detect it)"
        )
    fam = get_family(kind.family)
    mode = fam.audio_mode(audio_mode or kind.audio_mode)
    module: nn.Module
    if fam.name == "wav2lip":
        module = checkpoint.load_wav2lip(state, name=label)
    else:
        module, _ = checkpoint.load_unet(state, family=fam.name, audio_mode=mode.name, name=label)
    return LoadedNetwork(family=fam, audio_mode=mode, module=module, source=label, is_random=False)


def import_network_class(family: ModelFamily) -> Any:
    """The torch class behind ``family.network`` (imported now)."""
    return load_attr(family.network, what=f"the network of model family {family.name!r}")
