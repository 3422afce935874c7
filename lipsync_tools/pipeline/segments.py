"""Segments stage: cut the analysed frames into stretches in which one face is continuously present.

Real avatar footage has fade-ins, shot cuts, a second person, a presenter who looks away or walks out. A
package must hold one face, continuously, so the build splits the video and keeps one stretch:

1. **Shots.** Cut points come from the shot-cut detector (:mod:`.cuts`, run on the frames the build already
   decoded). Faces are never linked across a cut.
2. **Faces within a shot.** Detections on consecutive frames are linked into tracks when their boxes overlap
   (IoU) or their centres moved less than half the face's size, the face may be missed for up to
   ``max_gap`` frames, and the two faces look alike: their appearance signatures
   (:mod:`lipsync_tools.faces.signature`) are closer than ``same_face_max_distance``. A face in the same place
   that looks different is *another face* (an identity change the cut detector missed, e.g. two people
   filmed against the same wall): the old track ends there and a new one begins.
3. **Segments.** Within each shot the tracks are taken in order of presence (the sum of their box areas), a
   large face seen throughout before a brief close-up or a small face in the background, skipping any that
   overlap in time one already taken. Each track taken is a segment, from its first to its last detection.
   Frames inside a segment on which its face was missed (at most ``max_gap`` in a row) are filled later by the
   track stage; frames outside every segment are never stored.

Every segment records why it starts and ends (``video_start``/``range_start``, ``cut``, ``face_changed``,
``face_found``; ``video_end``/``range_end``, ``cut``, ``face_changed``, ``face_lost``), so a build can say
what it dropped and why. :func:`choose_segment` applies the ``--segment`` policy.

Frame numbers here are source frames: the analysed range starts at ``range_start``, not 0.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import NoFaceDetectedError, SegmentError, UsageError
from ..faces.base import FaceObservation
from ..faces.signature import SAME_FACE_MAX_DISTANCE, signature_distance

SegmentPolicy = Literal["longest", "fail"]
SEGMENT_POLICIES: tuple[str, ...] = ("longest", "fail")

# How many segments an error message or a terminal summary lists before "... and N more".
_LISTED_SEGMENTS = 8


@dataclass(frozen=True)
class SegmentOptions:
    """``max_gap_seconds``: the longest run of frames without the face that a segment bridges (the frames
    are filled); a longer one ends the segment. ``min_segment_seconds``: the shortest segment a package may
    be built from. ``policy``: ``longest`` keeps the longest segment; ``fail`` refuses a range that is not
    one segment from its first frame to its last. The rest tune the linking (see the module docstring).
    """

    max_gap_seconds: float = 0.5
    min_segment_seconds: float = 2.0
    policy: SegmentPolicy = "longest"
    min_iou: float = 0.3
    max_centre_shift: float = 0.5  # of the face's size (the square root of its box area), per link
    same_face_max_distance: float = SAME_FACE_MAX_DISTANCE

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_gap_seconds) and 0.0 <= self.max_gap_seconds <= 10.0):
            raise UsageError(f"--max-gap is {self.max_gap_seconds} s; expected 0..10 seconds (default 0.5)")
        if not (math.isfinite(self.min_segment_seconds) and 0.0 <= self.min_segment_seconds <= 3600.0):
            raise UsageError(
                f"--min-segment is {self.min_segment_seconds} s; expected 0..3600 seconds (default 2)"
            )
        if self.policy not in SEGMENT_POLICIES:
            raise UsageError(f"--segment is {self.policy!r}; expected one of {', '.join(SEGMENT_POLICIES)}")
        if not 0.0 < self.min_iou <= 1.0:
            raise UsageError(f"min_iou is {self.min_iou}; expected a value in (0, 1]")

    def max_gap_frames(self, fps: float) -> int:
        """The longest run of missed frames a segment bridges: the most whole frames within ``max_gap``."""
        return math.floor(self.max_gap_seconds * fps + 1e-6)

    def min_segment_frames(self, fps: float) -> int:
        return math.ceil(self.min_segment_seconds * fps - 1e-6)


@dataclass(frozen=True)
class Segment:
    """A stretch ``[start, end)`` of source frames holding one face. ``faces`` maps each frame on which the
    face was detected to the index of its observation on that frame."""

    start: int
    end: int
    start_reason: str
    end_reason: str
    faces: dict[int, int] = field(repr=False)

    @property
    def frames(self) -> int:
        return self.end - self.start

    @property
    def detected_frames(self) -> int:
        return len(self.faces)


# ----------------------------------------------------------------------------------------------- ranges


_FRAMES = re.compile(r"^\s*(\d+)\s*f\s*$", re.IGNORECASE)
_SECONDS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class TimePoint:
    """A point in the video as the user wrote it: seconds (``"2.5"``, ``"2.5s"``) or frames (``"50 f"``)."""

    text: str
    value: float
    unit: Literal["s", "f"]

    @classmethod
    def parse(cls, text: str, option: str) -> TimePoint:
        """Raises :class:`UsageError` naming ``option`` for anything but seconds or ``N f``."""
        frames = _FRAMES.match(text)
        if frames:
            return cls(text=text, value=float(frames.group(1)), unit="f")
        seconds = _SECONDS.match(text)
        if seconds:
            return cls(text=text, value=float(seconds.group(1)), unit="s")
        raise UsageError(
            f"{option} is {text!r}; expected seconds (e.g. 2.5) or a frame number followed by f (e.g. '50 f')"
        )

    def frame(self, fps: float) -> int:
        """The frame this point falls on (seconds round to the nearest frame boundary; halfway goes to the
        later frame, also when floating point lands a hair below halfway, so that a range of whole seconds
        holds the same number of frames wherever it starts)."""
        return int(self.value) if self.unit == "f" else math.floor(self.value * fps + 0.5 + 1e-6)

    def describe(self, fps: float) -> str:
        frame = self.frame(fps)
        return f"frame {frame}" if self.unit == "f" else f"{self.value:g} s (frame {frame})"


def parse_range(start: str | None, end: str | None) -> tuple[TimePoint | None, TimePoint | None]:
    """Parse ``--start``/``--end``; raise :class:`UsageError` if ``end`` is not after ``start`` when both
    use the same unit (mixed units are checked once the frame rate is known, by :func:`resolve_range`)."""
    first = TimePoint.parse(start, "--start") if start is not None else None
    last = TimePoint.parse(end, "--end") if end is not None else None
    if first is not None and last is not None and first.unit == last.unit and last.value <= first.value:
        raise UsageError(f"--end {end} is not after --start {start}; give a range that holds frames")
    return first, last


def resolve_range(start: TimePoint | None, end: TimePoint | None, fps: float) -> tuple[int, int | None]:
    """``(first frame, one past the last frame or None for the end of the video)``. Whether the range lies
    inside the video is known only once it is decoded (containers' frame counts can be wrong): the build
    checks that."""
    first = start.frame(fps) if start is not None else 0
    last = end.frame(fps) if end is not None else None
    if last is not None and last <= first:
        raise UsageError(
            f"--end {end.text if end else ''} (frame {last}) is not after --start "
            f"{start.text if start else '0'} (frame {first}); give a range that holds frames"
        )
    return first, last


# --------------------------------------------------------------------------------------------- analysis


@dataclass
class _Track:
    faces: dict[int, int]
    last_frame: int
    last_box: np.ndarray
    last_signature: np.ndarray
    presence: float = 0.0
    refused_at: int = -1  # the last frame on which a different face, in this one's place, was refused
    replaces_another: bool = False  # began as a different face in the place of a live track


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def _closeness(last: np.ndarray, box: np.ndarray, options: SegmentOptions) -> float:
    """How well ``box`` continues a track whose last box was ``last``: > 0 when it may, larger is better."""
    iou = _box_iou(last, box)
    if iou >= options.min_iou:
        return 1.0 + iou
    size = math.sqrt(max(_area(last), 1.0))
    shift = math.hypot((box[0] + box[2] - last[0] - last[2]) / 2, (box[1] + box[3] - last[1] - last[3]) / 2)
    return 1.0 - shift / (options.max_centre_shift * size) if shift < options.max_centre_shift * size else 0.0


def _same_face_limit(elapsed: int, options: SegmentOptions) -> float:
    """The signature distance under which two faces ``elapsed`` frames apart are the same face. A talking
    face drifts away from its own signature as frames pass (measured on the carphone clip: max 0.11 one
    frame apart, 0.19 five apart, 0.25 ten apart; different people 0.27 and more), so the limit grows by
    0.007 per frame of gap up to 0.26."""
    cap = max(options.same_face_max_distance, 0.26)
    return min(options.same_face_max_distance + 0.007 * max(elapsed - 1, 0), cap)


def _clipped(box: np.ndarray, frame_size: tuple[int, int]) -> bool:
    """Whether ``box`` reaches past the frame's edge (MediaPipe places a half-visible face's points there)."""
    return bool(box[0] < 0 or box[1] < 0 or box[2] > frame_size[0] or box[3] > frame_size[1])


def _link_shot(
    per_frame: Sequence[Sequence[FaceObservation]],
    signatures: Sequence[np.ndarray],
    first: int,
    last: int,
    offset: int,
    max_gap: int,
    options: SegmentOptions,
    frame_size: tuple[int, int] | None,
) -> list[_Track]:
    """Link the faces of one shot (analysed frames ``first..last-1``) into tracks."""
    tracks: list[_Track] = []
    for frame in range(first, last):
        faces = per_frame[frame]
        if not faces:
            continue
        live = [t for t in tracks if frame + offset - t.last_frame <= max_gap + 1]
        candidates = sorted(
            (
                (score, i, o)
                for i, track in enumerate(live)
                for o, face in enumerate(faces)
                if (score := _closeness(track.last_box, face.box, options)) > 0
            ),
            key=lambda c: -c[0],
        )
        used_tracks: set[int] = set()
        used_faces: set[int] = set()
        changed: dict[int, _Track] = {}  # face index -> the track it took the place of
        for _, i, o in candidates:
            if i in used_tracks or o in used_faces:
                continue
            track = live[i]
            # a face cut by the frame edge has a signature of half a face and the border: geometry decides
            judged = frame_size is None or not (
                _clipped(track.last_box, frame_size) or _clipped(faces[o].box, frame_size)
            )
            distance = signature_distance(track.last_signature, signatures[frame][o]) if judged else 0.0
            if distance > _same_face_limit(frame + offset - track.last_frame, options):
                changed.setdefault(o, track)
                continue
            track.faces[frame + offset] = o
            track.last_frame = frame + offset
            track.last_box = faces[o].box
            track.last_signature = signatures[frame][o]
            track.presence += _area(faces[o].box)
            used_tracks.add(i)
            used_faces.add(o)
        continuing = {id(live[i]) for i in used_tracks}
        for o, face in enumerate(faces):
            if o in used_faces:
                continue
            new = _Track(
                faces={frame + offset: o},
                last_frame=frame + offset,
                last_box=face.box,
                last_signature=signatures[frame][o],
                presence=_area(face.box),
            )
            replaced = changed.get(o)
            if replaced is not None and id(replaced) not in continuing:
                # A different face where this track's face was. The track stays live: if its own face comes
                # back within max_gap (the odd frame the signature misjudged: blur, a hand), it continues,
                # and the one-frame newcomer overlaps it and is never a segment.
                replaced.refused_at = frame + offset
                new.replaces_another = True
            tracks.append(new)
    return tracks


def find_segments(
    per_frame: Sequence[Sequence[FaceObservation]],
    signatures: Sequence[np.ndarray],
    cuts: Sequence[int],
    fps: float,
    options: SegmentOptions,
    *,
    range_start: int = 0,
    starts_video: bool = True,
    ends_video: bool = True,
    frame_size: tuple[int, int] | None = None,
) -> list[Segment]:
    """The segments of the analysed frames, in order.

    ``per_frame[i]`` and ``signatures[i]`` (uint8 ``(faces, SIGNATURE_SIZE)``) belong to source frame
    ``range_start + i``; ``cuts`` are the indices into ``per_frame`` where a new shot begins.
    ``starts_video``/``ends_video`` say whether the analysed range begins/ends with the video (reasons
    ``video_start``/``video_end``) or was cut by ``--start``/``--end`` (``range_start``/``range_end``).
    ``frame_size`` ``(width, height)``: faces whose box leaves the frame are linked by place alone (their
    signatures are of half a face); ``None`` always compares signatures.
    """
    n = len(per_frame)
    max_gap = options.max_gap_frames(fps)
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < n), n]
    segments: list[Segment] = []
    for first, last in itertools.pairwise(bounds):
        opens = ("video_start" if starts_video else "range_start") if first == 0 else "cut"
        closes = ("video_end" if ends_video else "range_end") if last == n else "cut"
        tracks = _link_shot(per_frame, signatures, first, last, range_start, max_gap, options, frame_size)
        taken: list[tuple[int, int]] = []
        for track in sorted(tracks, key=lambda t: -t.presence):
            begin, finish = min(track.faces), max(track.faces) + 1
            if any(begin < b_end and b_start < finish for b_start, b_end in taken):
                continue
            taken.append((begin, finish))
            if track.replaces_another:
                start_reason = "face_changed"
            elif begin - (first + range_start) <= max_gap:
                start_reason = opens
            else:
                start_reason = "face_found"
            if track.refused_at >= finish:
                end_reason = "face_changed"
            elif (last + range_start) - finish <= max_gap:
                end_reason = closes
            else:
                end_reason = "face_lost"
            faces = dict(sorted(track.faces.items()))
            segments.append(Segment(begin, finish, start_reason, end_reason, faces))
    segments.sort(key=lambda s: s.start)
    return segments


def choose_segment(
    segments: Sequence[Segment],
    options: SegmentOptions,
    fps: float,
    range_start: int,
    range_end: int,
) -> int:
    """The index of the segment to build from, by ``options.policy``.

    Raises:
        NoFaceDetectedError: no face anywhere in the range.
        SegmentError: the longest segment is shorter than ``min_segment_seconds`` (unless it is the whole
            range: a short clip that is all one face is what its user gave), or the policy is ``fail`` and
            the range is not one segment from its first frame to its last; the message lists the segments
            found.
    """
    frames = range_end - range_start
    if not segments:
        raise NoFaceDetectedError(
            f"no face found on any of the {frames} frames; expected one clearly visible face "
            "(check the video, or try another --face-backend)"
        )
    if options.policy == "fail":
        whole = len(segments) == 1 and (segments[0].start, segments[0].end) == (range_start, range_end)
        if not whole:
            raise SegmentError(
                f"--segment fail: frames {range_start}-{range_end} are not one continuous shot of one face; "
                f"found {describe_segments(segments, fps, range_start, range_end)}. Trim the video with "
                "--start/--end, or use --segment longest to keep the longest segment"
            )
        best = 0
    else:
        best = max(range(len(segments)), key=lambda i: (segments[i].frames, segments[i].detected_frames, -i))
    whole = (segments[best].start, segments[best].end) == (range_start, range_end)
    if segments[best].frames < options.min_segment_frames(fps) and not whole:
        raise SegmentError(
            f"no segment of one face lasts --min-segment {options.min_segment_seconds:g} s "
            f"({options.min_segment_frames(fps)} frames); found "
            f"{describe_segments(segments, fps, range_start, range_end)}. Use a video with a longer "
            "continuous shot, or lower --min-segment"
        )
    return best


def describe_segments(segments: Sequence[Segment], fps: float, range_start: int, range_end: int) -> str:
    """One line listing the segments (the first few), for error messages."""
    shown = [segment_text(s.start, s.end, s.start_reason, s.end_reason, fps) for s in segments]
    extra = len(shown) - _LISTED_SEGMENTS
    listed = "; ".join(shown[:_LISTED_SEGMENTS]) + (f"; and {extra} more" if extra > 0 else "")
    return (
        f"{len(segments)} segment{'s' if len(segments) != 1 else ''} in frames {range_start}-{range_end}: "
        f"{listed}"
    )


_START_TEXT = {
    "video_start": "from the start of the video",
    "range_start": "from --start",
    "cut": "from a cut",
    "face_changed": "from where a different face replaced the previous one",
    "face_found": "from where the face appears",
}
_END_TEXT = {
    "video_end": "to the end of the video",
    "range_end": "to --end",
    "cut": "to a cut",
    "face_changed": "to where a different face takes its place",
    "face_lost": "to where the face is lost for longer than --max-gap",
}


def reasons_text(start_reason: str, end_reason: str) -> str:
    """``"from a cut to the end of the video"``: why a segment starts and ends, for people."""
    return f"{_START_TEXT.get(start_reason, start_reason)} {_END_TEXT.get(end_reason, end_reason)}"


def segment_text(start: int, end: int, start_reason: str, end_reason: str, fps: float) -> str:
    """``"frames 13-53 (0.52-2.12 s, from a cut to a cut)"``: one segment for people."""
    reasons = reasons_text(start_reason, end_reason)
    return f"frames {start}-{end} ({start / fps:.2f}-{end / fps:.2f} s, {reasons})"
