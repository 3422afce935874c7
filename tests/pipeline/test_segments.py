"""Segments stage: splitting the analysed frames into stretches of one continuously present face, choosing
one, and the ``--start``/``--end`` time points. Faces and signatures are synthetic."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pytest

from lipsync_tools.errors import NoFaceDetectedError, SegmentError, UsageError
from lipsync_tools.faces.base import FaceObservation
from lipsync_tools.faces.signature import SAME_FACE_MAX_DISTANCE, SIGNATURE_SIZE, signature_distance
from lipsync_tools.pipeline.segments import (
    Segment,
    SegmentOptions,
    TimePoint,
    choose_segment,
    describe_segments,
    find_segments,
    parse_range,
    reasons_text,
    resolve_range,
    segment_text,
)
from lipsync_tools.pipeline.track import TrackOptions, fill_track

FPS = 25.0
BINS = 59  # LBP bins per block of a signature
BLOCKS = SIGNATURE_SIZE // BINS
BLOCK_SUM = 225  # codes per block


# ------------------------------------------------------------------------------------------ synthetic faces


def face(x0: float, y0: float, side: float, k: int = 5) -> FaceObservation:
    box = np.array([x0, y0, x0 + side, y0 + side], np.float32)
    pts = np.stack([np.linspace(x0, x0 + side, k), np.linspace(y0, y0 + side, k)], axis=1).astype(np.float32)
    return FaceObservation(box=box, landmarks=pts, score=0.9)


class Person:
    """A fixed random signature (each block a histogram summing to 225) and per-frame noisy copies of it:
    ``moves`` codes of every block moved to random bins."""

    def __init__(self, seed: int, moves: int = 50) -> None:
        rng = np.random.default_rng(seed)
        self.base = np.concatenate(
            [rng.multinomial(BLOCK_SUM, rng.dirichlet(np.full(BINS, 0.5))) for _ in range(BLOCKS)]
        ).astype(np.uint8)
        self.moves = moves
        self.rng = np.random.default_rng(seed + 1000)

    def signature(self) -> np.ndarray:
        blocks = self.base.reshape(BLOCKS, BINS).astype(np.int64)
        for block in blocks:
            block -= self.rng.multivariate_hypergeometric(block, self.moves)
            block += self.rng.multinomial(self.moves, np.full(BINS, 1 / BINS))
        return blocks.reshape(-1).astype(np.uint8)


A = Person(1)
B = Person(2)
C = Person(3)
D = Person(4)

Seen = tuple[FaceObservation, Person]


def frames(seen: Sequence[Iterable[Seen]]) -> tuple[list[list[FaceObservation]], list[np.ndarray]]:
    """``per_frame`` and ``signatures`` for ``find_segments`` from each frame's (face, person) pairs."""
    per_frame: list[list[FaceObservation]] = []
    signatures: list[np.ndarray] = []
    for frame in seen:
        pairs = list(frame)
        per_frame.append([f for f, _ in pairs])
        signatures.append(
            np.stack([p.signature() for _, p in pairs]) if pairs else np.zeros((0, SIGNATURE_SIZE), np.uint8)
        )
    return per_frame, signatures


def segments_of(
    seen: Sequence[Iterable[Seen]],
    cuts: Sequence[int] = (),
    options: SegmentOptions | None = None,
    *,
    range_start: int = 0,
    starts_video: bool = True,
    ends_video: bool = True,
) -> list[Segment]:
    per_frame, signatures = frames(seen)
    return find_segments(
        per_frame,
        signatures,
        cuts,
        FPS,
        options or SegmentOptions(),
        range_start=range_start,
        starts_video=starts_video,
        ends_video=ends_video,
    )


def spans(segments: Sequence[Segment]) -> list[tuple[int, int, str, str]]:
    return [(s.start, s.end, s.start_reason, s.end_reason) for s in segments]


def seg(
    start: int, end: int, detected: int | None = None, reasons: tuple[str, str] = ("cut", "cut")
) -> Segment:
    """A segment for :func:`choose_segment`, detected on its first ``detected`` frames and its last."""
    count = end - start if detected is None else detected
    faces = {start + i: 0 for i in range(count - 1)} | {end - 1: 0}
    return Segment(start, end, reasons[0], reasons[1], faces)


def test_synthetic_signatures_are_alike_for_one_person_and_differ_between_people() -> None:
    for person in (A, B, C, D):
        sig = person.signature()
        assert sig.shape == (SIGNATURE_SIZE,) and sig.dtype == np.uint8
        assert (sig.reshape(BLOCKS, BINS).astype(int).sum(axis=1) == BLOCK_SUM).all()
    same = [signature_distance(A.signature(), A.signature()) for _ in range(50)]
    assert 0.0 < max(same) < SAME_FACE_MAX_DISTANCE - 0.1
    for p, q in ((A, B), (A, C), (B, C), (C, D)):
        assert signature_distance(p.signature(), q.signature()) > SAME_FACE_MAX_DISTANCE + 0.1


# ------------------------------------------------------------------------------------------------ basics


def test_one_face_throughout_is_one_segment() -> None:
    segments = segments_of([[(face(100 + i, 50, 80), A)] for i in range(60)])
    assert spans(segments) == [(0, 60, "video_start", "video_end")]
    assert segments[0].frames == 60 and segments[0].detected_frames == 60
    assert segments[0].faces == {i: 0 for i in range(60)}


def test_the_observation_index_is_recorded_per_frame() -> None:
    seen = [[(face(100, 50, 80), A)] for _ in range(10)]
    seen[4] = [(face(400, 300, 20), B), (face(100, 50, 80), A)]  # a second, smaller face listed first
    (main,) = [s for s in segments_of(seen) if s.frames == 10]
    assert main.faces[4] == 1 and main.faces[3] == 0


def test_a_range_uses_source_frames_and_range_reasons() -> None:
    segments = segments_of(
        [[(face(100, 50, 80), A)] for _ in range(60)], range_start=100, starts_video=False, ends_video=False
    )
    assert spans(segments) == [(100, 160, "range_start", "range_end")]
    assert sorted(segments[0].faces) == list(range(100, 160))


def test_no_face_anywhere_is_no_segment() -> None:
    assert segments_of([[] for _ in range(30)]) == []
    assert segments_of([]) == []


# -------------------------------------------------------------------------------------------------- cuts


def test_a_cut_between_two_faces_splits() -> None:
    seen = [[(face(100, 50, 80), A)] for _ in range(30)] + [[(face(300, 60, 80), B)] for _ in range(30)]
    assert spans(segments_of(seen, cuts=[30])) == [
        (0, 30, "video_start", "cut"),
        (30, 60, "cut", "video_end"),
    ]


def test_a_cut_always_splits_even_the_same_face_in_the_same_place() -> None:
    seen = [[(face(100, 50, 80), A)] for _ in range(60)]
    assert spans(segments_of(seen, cuts=[30])) == [
        (0, 30, "video_start", "cut"),
        (30, 60, "cut", "video_end"),
    ]


def test_cuts_are_indices_into_the_analysed_frames() -> None:
    seen = [[(face(100, 50, 80), A)] for _ in range(60)]
    segments = segments_of(seen, cuts=[40, 20, 20, 0, 60, 99], range_start=100, starts_video=False)
    assert spans(segments) == [
        (100, 120, "range_start", "cut"),
        (120, 140, "cut", "cut"),
        (140, 160, "cut", "video_end"),
    ]


# ------------------------------------------------------------------------------------------ identity change


def test_a_different_face_in_the_same_place_without_a_cut_splits() -> None:
    seen = [[(face(100, 50, 80), A)] for _ in range(30)] + [[(face(100, 50, 80), B)] for _ in range(30)]
    assert spans(segments_of(seen)) == [
        (0, 30, "video_start", "face_changed"),
        (30, 60, "face_changed", "video_end"),
    ]


def test_the_same_face_in_the_same_place_is_not_split() -> None:
    seen = [[(face(100, 50, 80), A)] for _ in range(60)]
    assert spans(segments_of(seen)) == [(0, 60, "video_start", "video_end")]


def test_a_face_change_then_back_makes_three_segments() -> None:
    seen = (
        [[(face(100, 50, 80), A)] for _ in range(20)]
        + [[(face(100, 50, 80), B)] for _ in range(20)]
        + [[(face(100, 50, 80), A)] for _ in range(20)]
    )
    assert spans(segments_of(seen)) == [
        (0, 20, "video_start", "face_changed"),
        (20, 40, "face_changed", "face_changed"),
        (40, 60, "face_changed", "video_end"),
    ]


# --------------------------------------------------------------------------------------------------- gaps


def test_max_gap_and_min_segment_in_frames() -> None:
    options = SegmentOptions()
    assert options.max_gap_frames(25) == 12
    assert options.min_segment_frames(25) == 50
    assert options.max_gap_frames(29.97) == 14  # 14.985 frames: whole frames only
    assert options.min_segment_frames(29.97) == 60  # 59.94 frames: at least that long
    assert options.max_gap_frames(30) == 15 and options.min_segment_frames(30) == 60  # exact, no float slop
    assert SegmentOptions(max_gap_seconds=0.0).max_gap_frames(25) == 0
    assert SegmentOptions(max_gap_seconds=0.2).max_gap_frames(25) == 5  # 0.2 * 25 is 5.000000000000001


def _with_gap(before: int, missing: int, after: int) -> list[list[Seen]]:
    return (
        [[(face(100, 50, 80), A)] for _ in range(before)]
        + [[] for _ in range(missing)]
        + [[(face(100, 50, 80), A)] for _ in range(after)]
    )


def test_a_gap_longer_than_max_gap_splits() -> None:
    assert spans(segments_of(_with_gap(20, 13, 47))) == [
        (0, 20, "video_start", "face_lost"),
        (33, 80, "face_found", "video_end"),
    ]


def test_a_gap_of_max_gap_frames_is_bridged_and_filled_by_the_track_stage() -> None:
    per_frame, signatures = frames(_with_gap(20, 12, 48))
    segments = find_segments(per_frame, signatures, [], FPS, SegmentOptions())
    assert spans(segments) == [(0, 80, "video_start", "video_end")]
    (kept,) = segments
    assert kept.detected_frames == 68
    track = fill_track(per_frame[kept.start : kept.end], kept.faces, kept.start, kept.end, TrackOptions())
    assert track.filled.tolist() == [20 <= i < 32 for i in range(80)]


def test_a_bridged_gap_may_have_a_moved_face_on_either_side() -> None:
    seen = _with_gap(20, 12, 0) + [[(face(130, 60, 80), A)] for _ in range(20)]
    assert spans(segments_of(seen)) == [(0, 52, "video_start", "video_end")]


def test_no_gap_at_all_with_max_gap_zero() -> None:
    options = SegmentOptions(max_gap_seconds=0.0)
    assert spans(segments_of(_with_gap(10, 1, 10), options=options)) == [
        (0, 10, "video_start", "face_lost"),
        (11, 21, "face_found", "video_end"),
    ]


def test_faceless_frames_at_the_start_within_max_gap_are_dropped_with_the_start_reason() -> None:
    assert spans(segments_of(_with_gap(0, 12, 40))) == [(12, 52, "video_start", "video_end")]
    assert spans(segments_of(_with_gap(0, 13, 40))) == [(13, 53, "face_found", "video_end")]


def test_faceless_frames_at_the_end_within_max_gap_are_dropped_with_the_end_reason() -> None:
    assert spans(segments_of(_with_gap(40, 12, 0))) == [(0, 40, "video_start", "video_end")]
    assert spans(segments_of(_with_gap(40, 13, 0))) == [(0, 40, "video_start", "face_lost")]


def test_faceless_frames_next_to_a_cut_or_range_edge_carry_its_reason() -> None:
    seen = _with_gap(20, 5, 0) + _with_gap(0, 5, 20)
    segments = segments_of(seen, cuts=[25], range_start=10, starts_video=False, ends_video=False)
    assert spans(segments) == [(10, 30, "range_start", "cut"), (40, 60, "cut", "range_end")]


# --------------------------------------------------------------------------------------- several faces


def test_the_large_steady_face_is_followed_not_the_background_or_a_brief_closeup() -> None:
    seen: list[list[Seen]] = []
    for i in range(30):
        frame: list[Seen] = [(face(10, 10, 20), B), (face(100 + i, 50, 80), A)]  # background face first
        if i in (3, 4):
            frame.append((face(300, 200, 150), C))  # a big face for two frames only
        seen.append(frame)
    segments = segments_of(seen)
    assert spans(segments) == [(0, 30, "video_start", "video_end")]
    assert set(segments[0].faces.values()) == {1}  # the main face, listed second on every frame


def test_a_later_face_in_the_same_shot_that_does_not_overlap_is_its_own_segment() -> None:
    seen: list[list[Seen]] = [[(face(100, 50, 80), A), (face(10, 10, 20), B)] for _ in range(30)]
    seen += [[] for _ in range(15)]
    seen += [[(face(400, 100, 90), C)] for _ in range(35)]
    segments = segments_of(seen)
    assert spans(segments) == [(0, 30, "video_start", "face_lost"), (45, 80, "face_found", "video_end")]
    assert set(segments[0].faces.values()) == {0}


def test_two_people_side_by_side_are_one_segment_of_the_larger() -> None:
    seen = [[(face(50, 50, 60), A), (face(300, 50, 90), B)] for _ in range(40)]
    segments = segments_of(seen)
    assert spans(segments) == [(0, 40, "video_start", "video_end")]
    assert set(segments[0].faces.values()) == {1}


def test_a_fast_moving_face_stays_one_segment() -> None:
    side, step = 100.0, 34.0  # moves 48 px a frame diagonally: under half its size, IoU about 0.28
    boxes = [face(100 + step * i, 50 + step * i, side) for i in range(12)]
    a, b = boxes[0].box, boxes[1].box
    inter = (a[2] - b[0]) * (a[3] - b[1])
    assert inter / (2 * side * side - inter) < 0.3
    assert math.hypot(step, step) < side / 2
    segments = segments_of([[(f, A)] for f in boxes])
    assert spans(segments) == [(0, 12, "video_start", "video_end")]


def test_a_jump_of_more_than_half_the_face_size_is_another_track() -> None:
    boxes = [face(100, 50, 100) for _ in range(20)] + [face(400, 50, 100) for _ in range(30)]
    segments = segments_of([[(f, A)] for f in boxes])
    assert spans(segments) == [(0, 20, "video_start", "face_lost"), (20, 50, "face_found", "video_end")]


# ------------------------------------------------------------------------------------------ random patterns


@pytest.mark.parametrize("seed", range(150))
def test_random_presence_patterns_give_valid_segments(seed: int) -> None:
    """Property test (Hypothesis is not installed, so seeded random cases): one face, present on random
    frames, random cuts, a random range offset and max gap."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 201))
    presence = rng.random(n) < rng.uniform(0.05, 1.0)
    cuts = sorted({int(c) for c in rng.integers(0, n + 1, size=int(rng.integers(0, 5)))})
    range_start = int(rng.integers(0, 1000))
    options = SegmentOptions(max_gap_seconds=float(rng.choice([0.0, 0.1, 0.3, 0.5, 1.0])))
    max_gap = options.max_gap_frames(FPS)
    seen = [[(face(100, 50, 80), A)] if present else [] for present in presence]
    segments = segments_of(seen, cuts=cuts, options=options, range_start=range_start)

    detected = {range_start + i for i in np.flatnonzero(presence)}
    shot_starts = {range_start + c for c in cuts if 0 < c < n}
    previous_end = range_start
    for s in segments:
        assert range_start <= s.start < s.end <= range_start + n
        assert s.start >= previous_end  # sorted, no overlap
        previous_end = s.end
        assert s.start in detected and s.end - 1 in detected
        assert set(s.faces) == {f for f in detected if s.start <= f < s.end}
        assert not any(s.start < c < s.end for c in shot_starts)  # never across a cut
        run = longest = 0
        for f in range(s.start, s.end):
            run = 0 if f in detected else run + 1
            longest = max(longest, run)
        assert longest <= max_gap
    # every detection belongs to a segment: with one face, none is dropped
    assert detected == {f for s in segments for f in s.faces}


# -------------------------------------------------------------------------------------------- choosing


def test_choose_the_longest() -> None:
    options = SegmentOptions(min_segment_seconds=0.0)
    assert choose_segment([seg(0, 30), seg(30, 100), seg(100, 120)], options, FPS, 0, 120) == 1


def test_choose_ties_go_to_more_detected_frames_then_the_earlier() -> None:
    options = SegmentOptions(min_segment_seconds=0.0)
    assert choose_segment([seg(0, 50, detected=40), seg(60, 110, detected=45)], options, FPS, 0, 120) == 1
    assert choose_segment([seg(0, 50, detected=45), seg(60, 110, detected=45)], options, FPS, 0, 120) == 0
    assert choose_segment([seg(0, 50, detected=45), seg(60, 110, detected=40)], options, FPS, 0, 120) == 0


def test_choose_accepts_exactly_min_segment() -> None:
    assert choose_segment([seg(10, 60)], SegmentOptions(), FPS, 0, 100) == 0  # 50 frames = 2 s


def test_choose_refuses_when_the_longest_is_shorter_than_min_segment() -> None:
    segments = [seg(0, 30, reasons=("video_start", "cut")), seg(30, 79, reasons=("cut", "video_end"))]
    with pytest.raises(SegmentError) as info:
        choose_segment(segments, SegmentOptions(), FPS, 0, 79)
    assert info.value.exit_code == 21
    message = str(info.value)
    assert "--min-segment 2 s (50 frames)" in message
    assert "2 segments in frames 0-79" in message
    assert "frames 0-30 (0.00-1.20 s, from the start of the video to a cut)" in message
    assert "frames 30-79 (1.20-3.16 s, from a cut to the end of the video)" in message


def test_choose_fail_policy_accepts_one_segment_covering_the_range() -> None:
    options = SegmentOptions(policy="fail")
    assert choose_segment([seg(100, 200, detected=10)], options, FPS, 100, 200) == 0


@pytest.mark.parametrize(
    "segments",
    [
        [seg(101, 200)],  # faceless frames dropped at the start
        [seg(100, 199)],  # ... at the end
        [seg(100, 150), seg(150, 200)],  # two segments that together cover it
    ],
)
def test_choose_fail_policy_refuses_anything_else(segments: list[Segment]) -> None:
    with pytest.raises(SegmentError) as info:
        choose_segment(segments, SegmentOptions(policy="fail"), FPS, 100, 200)
    message = str(info.value)
    assert "--segment fail: frames 100-200 are not one continuous shot of one face" in message
    assert (
        f"{len(segments)} segment" in message and f"frames {segments[0].start}-{segments[0].end}" in message
    )
    assert "--start/--end" in message and "--segment longest" in message


def test_choose_without_segments_is_no_face_not_a_segment_error() -> None:
    for policy in ("longest", "fail"):
        with pytest.raises(NoFaceDetectedError, match="no face found on any of the 40 frames") as info:
            choose_segment([], SegmentOptions(policy=policy), FPS, 10, 50)
        assert type(info.value) is NoFaceDetectedError
        assert info.value.exit_code == 8


def test_describe_segments_lists_at_most_eight() -> None:
    segments = [seg(10 * i, 10 * i + 5) for i in range(11)]
    text = describe_segments(segments, FPS, 0, 110)
    assert text.startswith("11 segments in frames 0-110: frames 0-5 (")
    assert text.count("frames ") == 9  # the heading and 8 segments
    assert "frames 70-75" in text and "frames 80-85" not in text
    assert text.endswith("; and 3 more")
    one = describe_segments(segments[:1], FPS, 0, 110)
    assert one.startswith("1 segment in frames 0-110: ") and "more" not in one


def test_segment_and_reasons_text() -> None:
    assert reasons_text("face_found", "face_lost") == (
        "from where the face appears to where the face is lost for longer than --max-gap"
    )
    assert reasons_text("range_start", "range_end") == "from --start to --end"
    assert reasons_text("face_changed", "face_changed") == (
        "from where a different face replaced the previous one to where a different face takes its place"
    )
    assert reasons_text("odd", "video_end") == "odd to the end of the video"
    assert segment_text(13, 53, "cut", "cut", 25.0) == "frames 13-53 (0.52-2.12 s, from a cut to a cut)"


# --------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"max_gap_seconds": -0.1}, "--max-gap"),
        ({"max_gap_seconds": math.nan}, "--max-gap"),
        ({"max_gap_seconds": 11.0}, "--max-gap"),
        ({"min_segment_seconds": -1.0}, "--min-segment"),
        ({"min_segment_seconds": math.inf}, "--min-segment"),
        ({"policy": "shortest"}, "--segment"),
        ({"min_iou": 0.0}, "min_iou"),
    ],
)
def test_bad_segment_options(kwargs: dict[str, object], option: str) -> None:
    with pytest.raises(UsageError, match=f"^{option} is "):
        SegmentOptions(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- time points


@pytest.mark.parametrize(
    ("text", "value", "unit"),
    [
        ("2.5", 2.5, "s"),
        ("2.5s", 2.5, "s"),
        (" 2.5 s ", 2.5, "s"),
        ("3", 3.0, "s"),
        (".5", 0.5, "s"),
        ("2.", 2.0, "s"),
        ("0", 0.0, "s"),
        ("50 f", 50.0, "f"),
        ("50f", 50.0, "f"),
        ("50 F", 50.0, "f"),
        ("0 f", 0.0, "f"),
    ],
)
def test_time_point_parse(text: str, value: float, unit: str) -> None:
    point = TimePoint.parse(text, "--start")
    assert (point.text, point.value, point.unit) == (text, value, unit)


@pytest.mark.parametrize(
    "text", ["abc", "-1", "1e3", "", " ", "2.5 f", "2.5ms", "1,5", "f", "s", "nan"]
)
def test_time_point_garbage_names_the_option(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--end is .*expected seconds \(e\.g\. 2\.5\) or a frame number"):
        TimePoint.parse(text, "--end")


def test_time_point_frames() -> None:
    assert TimePoint.parse("50 f", "--start").frame(25) == 50
    assert TimePoint.parse("50 f", "--start").frame(29.97) == 50  # frames ignore the rate
    assert TimePoint.parse("2", "--start").frame(25) == 50
    assert TimePoint.parse("2.5", "--start").frame(29.97) == 75  # 74.925
    assert TimePoint.parse("10", "--start").frame(29.97) == 300  # 299.7
    assert TimePoint.parse("2.51", "--start").frame(25) == 63  # 62.75
    assert TimePoint.parse("2.49", "--start").frame(25) == 62  # 62.25


def test_time_point_halfway_between_frames_rounds_up() -> None:
    """A time exactly halfway between two frame starts goes to the later frame, always, so that a range of
    whole seconds holds the same number of frames wherever it starts."""
    assert TimePoint.parse("2.5", "--start").frame(25) == 63  # 62.5
    assert TimePoint.parse("1.5", "--start").frame(25) == 38  # 37.5
    assert TimePoint.parse("0.5", "--start").frame(25) == 13  # 12.5
    assert TimePoint.parse("2.3", "--start").frame(25) == 58  # 57.49999999999999 in floating point
    for start in ("0.1", "0.3", "1.5", "2.3", "2.54", "7.7"):
        end = str(float(start) + 1)
        first, last = resolve_range(*parse_range(start, end), 25.0)
        assert last is not None and last - first == 25, (start, end, first, last)


def test_time_point_describe() -> None:
    assert TimePoint.parse("2", "--start").describe(25) == "2 s (frame 50)"
    assert TimePoint.parse("50 f", "--start").describe(25) == "frame 50"


def test_parse_range() -> None:
    assert parse_range(None, None) == (None, None)
    first, last = parse_range("1", None)
    assert first is not None and (first.value, first.unit) == (1.0, "s") and last is None
    first, last = parse_range(None, "50 f")
    assert first is None and last is not None and (last.value, last.unit) == (50.0, "f")
    first, last = parse_range("50 f", "1")  # mixed units: checked once the rate is known
    assert first is not None and last is not None


@pytest.mark.parametrize(
    ("start", "end"), [("3", "2"), ("2", "2"), ("2.5s", "2.5"), ("50 f", "50f"), ("60 f", "50 f")]
)
def test_parse_range_end_not_after_start(start: str, end: str) -> None:
    with pytest.raises(UsageError, match=rf"^--end {end} is not after --start {start}"):
        parse_range(start, end)


def test_parse_range_names_the_bad_option() -> None:
    with pytest.raises(UsageError, match=r"^--start is 'x'"):
        parse_range("x", "2")
    with pytest.raises(UsageError, match=r"^--end is 'y'"):
        parse_range("1", "y")


def test_resolve_range() -> None:
    assert resolve_range(None, None, 25.0) == (0, None)
    assert resolve_range(*parse_range("2", None), 25.0) == (50, None)
    assert resolve_range(*parse_range(None, "2"), 25.0) == (0, 50)
    assert resolve_range(*parse_range("50 f", "3"), 25.0) == (50, 75)
    assert resolve_range(*parse_range("1", "100 f"), 29.97) == (30, 100)


@pytest.mark.parametrize(
    ("start", "end", "fps"),
    [
        ("50 f", "2", 25.0),
        ("50 f", "1", 25.0),
        ("2", "50 f", 25.0),
        ("2", "49 f", 25.0),
        ("0 f", "0.01", 25.0),
    ],
)
def test_resolve_range_end_not_after_start_in_mixed_units(start: str, end: str, fps: float) -> None:
    with pytest.raises(UsageError, match=rf"^--end {end} \(frame \d+\) is not after --start {start} \(frame"):
        resolve_range(*parse_range(start, end), fps)


def test_resolve_range_end_not_after_the_video_start() -> None:
    with pytest.raises(UsageError, match=r"^--end 0 f \(frame 0\) is not after --start 0 \(frame 0\)"):
        resolve_range(*parse_range(None, "0 f"), 25.0)


def test_a_short_range_that_is_all_one_segment_is_kept_whatever_its_length() -> None:
    """--min-segment guards against keeping a fragment; a 1 s clip that is one face throughout is what its
    user gave (with either policy)."""
    whole = Segment(0, 25, "video_start", "video_end", {i: 0 for i in range(25)})
    for policy in ("longest", "fail"):
        assert choose_segment([whole], SegmentOptions(policy=policy), FPS, 0, 25) == 0  # type: ignore[arg-type]
    part = Segment(5, 25, "video_start", "video_end", {i: 0 for i in range(5, 25)})
    with pytest.raises(SegmentError, match="--min-segment 2 s"):
        choose_segment([part], SegmentOptions(), FPS, 0, 25)
