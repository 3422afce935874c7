"""Lip-sync networks and their families, checkpoint loaders and inference backends.

Only PyTorch is imported here; ONNX Runtime is imported when the ``onnx`` backend is created.
"""

from lipsync_tools.models.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    BackendOptions,
    InferenceBackend,
    TorchBackend,
    create_backend,
    network_input_nhwc,
)
from lipsync_tools.models.checkpoint import (
    NetworkKind,
    check_state_dict,
    detect_network,
    extract_state_dict,
    load_unet,
    load_wav2lip,
    random_unet,
    random_wav2lip,
    read_state_dict,
)
from lipsync_tools.models.families import (
    DEFAULT_FAMILY,
    MODEL_FAMILIES,
    LoadedNetwork,
    family_names,
    get_family,
    load_network,
    random_network,
)
from lipsync_tools.models.family import AudioMode, ModelFamily
from lipsync_tools.models.wav2lip import CROP_SIZE, MEL_BINS, MEL_STEPS, IdentityModel, Wav2Lip

__all__ = [
    "BACKENDS",
    "CROP_SIZE",
    "DEFAULT_BACKEND",
    "DEFAULT_FAMILY",
    "MEL_BINS",
    "MEL_STEPS",
    "MODEL_FAMILIES",
    "AudioMode",
    "BackendOptions",
    "IdentityModel",
    "InferenceBackend",
    "LoadedNetwork",
    "ModelFamily",
    "NetworkKind",
    "TorchBackend",
    "Wav2Lip",
    "check_state_dict",
    "create_backend",
    "detect_network",
    "extract_state_dict",
    "family_names",
    "get_family",
    "load_network",
    "load_unet",
    "load_wav2lip",
    "network_input_nhwc",
    "random_network",
    "random_unet",
    "random_wav2lip",
    "read_state_dict",
]
