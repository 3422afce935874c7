"""Lip-sync networks and their families, checkpoint loaders and inference backends.

Only PyTorch is imported here; ONNX Runtime is imported when the ``onnx`` backend is created (or a model is
quantized), its GPU providers when a session asks for them.
"""

from lipsync_tools.models.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    BackendOptions,
    InferenceBackend,
    TorchBackend,
    create_backend,
    crops_with_prediction,
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
from lipsync_tools.models.devices import PRECISIONS, Device, onnx_providers, parse_device, torch_device
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
from lipsync_tools.models.quantize import (
    INT8_MIN_PSNR_DB,
    QUANT_REVISION,
    CalibrationSet,
    cached_float16,
    psnr,
    quantize_int8,
)
from lipsync_tools.models.wav2lip import CROP_SIZE, MEL_BINS, MEL_STEPS, IdentityModel, Wav2Lip

__all__ = [
    "BACKENDS",
    "CROP_SIZE",
    "DEFAULT_BACKEND",
    "DEFAULT_FAMILY",
    "INT8_MIN_PSNR_DB",
    "MEL_BINS",
    "MEL_STEPS",
    "MODEL_FAMILIES",
    "PRECISIONS",
    "QUANT_REVISION",
    "AudioMode",
    "BackendOptions",
    "CalibrationSet",
    "Device",
    "IdentityModel",
    "InferenceBackend",
    "LoadedNetwork",
    "ModelFamily",
    "NetworkKind",
    "TorchBackend",
    "Wav2Lip",
    "cached_float16",
    "check_state_dict",
    "create_backend",
    "crops_with_prediction",
    "detect_network",
    "extract_state_dict",
    "family_names",
    "get_family",
    "load_network",
    "load_unet",
    "load_wav2lip",
    "network_input_nhwc",
    "onnx_providers",
    "parse_device",
    "psnr",
    "quantize_int8",
    "random_network",
    "random_unet",
    "random_wav2lip",
    "read_state_dict",
    "torch_device",
]
