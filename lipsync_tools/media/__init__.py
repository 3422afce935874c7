"""Media I/O: decode video frames and audio tracks (PyAV), encode/decode still images (OpenCV), write MP4s."""

from lipsync_tools.media.audio import float_from_pcm16, load_audio, pcm16_from_float
from lipsync_tools.media.images import ImageCodec, decode_image, encode_image
from lipsync_tools.media.video import FrameReader, VideoInfo, iter_frames, probe_video
from lipsync_tools.media.writer import write_video

__all__ = [
    "FrameReader",
    "ImageCodec",
    "VideoInfo",
    "decode_image",
    "encode_image",
    "float_from_pcm16",
    "iter_frames",
    "load_audio",
    "pcm16_from_float",
    "probe_video",
    "write_video",
]
