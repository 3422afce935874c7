"""Lip-sync networks, their checkpoint loaders and inference backends.

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
    check_state_dict,
    extract_state_dict,
    load_wav2lip,
    random_wav2lip,
)
from lipsync_tools.models.wav2lip import CROP_SIZE, MEL_BINS, MEL_STEPS, IdentityModel, Wav2Lip

__all__ = [
    "BACKENDS",
    "CROP_SIZE",
    "DEFAULT_BACKEND",
    "MEL_BINS",
    "MEL_STEPS",
    "BackendOptions",
    "IdentityModel",
    "InferenceBackend",
    "TorchBackend",
    "Wav2Lip",
    "check_state_dict",
    "create_backend",
    "extract_state_dict",
    "load_wav2lip",
    "network_input_nhwc",
    "random_wav2lip",
]
