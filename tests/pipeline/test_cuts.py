import cv2
import numpy as np
import pytest

from lipsync_tools.errors import UsageError
from lipsync_tools.media.video import iter_frames
from lipsync_tools.pipeline.cuts import CutDetector, CutOptions
from tests import samples


def _cuts(frames, fps: float = 25.0, options: CutOptions | None = None) -> list[int]:
    detector = CutDetector(fps, options or CutOptions())
    for frame in frames:
        detector.add(frame)
    return detector.cuts()


def _carphone(n: int, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    frames = []
    for frame in iter_frames(samples.carphone_path()):
        frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR))
        if len(frames) == n:
            break
    return frames


def _fade(image: np.ndarray, steps: int) -> list[np.ndarray]:
    """``steps`` frames brightening ``image`` from 1/steps to full (the frame before is black)."""
    return [(image.astype(np.float32) * (i / steps)).round().astype(np.uint8) for i in range(1, steps + 1)]


@pytest.mark.parametrize("other", ["colour_bars", "carphone"])
def test_hard_cut_is_found_at_the_first_frame_of_the_new_shot(other):
    first = list(samples.astronaut_frames(17))
    second = [samples.colour_bars()] * 8 if other == "colour_bars" else _carphone(8)
    detector = CutDetector(25.0)
    for frame in [*first, *second]:
        detector.add(frame)
    assert detector.cuts() == [17]
    assert detector.frames == 25


def test_a_long_shot_with_small_motion_has_no_cut():
    assert _cuts(samples.astronaut_frames(100)) == []
    assert _cuts(_carphone(120), fps=29.97) == []  # a real talking head: head, mouth and camera move


def test_a_dissolve_between_two_shots_has_no_cut():
    astronaut = next(samples.astronaut_frames(1))
    carphone = _carphone(1)[0]
    dissolve = [cv2.addWeighted(carphone, i / 10, astronaut, 1 - i / 10, 0) for i in range(1, 10)]
    assert _cuts([astronaut] * 5 + dissolve + [carphone] * 5) == []


def test_a_fade_from_black_gives_no_cut_inside_the_fade():
    # The step from pure black to the first faintly lit frame does score as a cut: OpenCV gives black
    # hue 0 and saturation 0, so that frame's hue and saturation jump at once (32 for this fade, threshold
    # 27). Both sides of that cut are faceless; no cut may fall inside the fade itself.
    image = next(samples.astronaut_frames(1))
    black = np.zeros_like(image)
    cuts = _cuts([black] * 5 + _fade(image, 10) + [image] * 5)
    assert cuts in ([], [5])


def test_a_fade_from_dark_grey_has_no_cut():
    image = next(samples.astronaut_frames(1))
    start = (image.astype(np.float32) * 0.2).round().astype(np.uint8)
    fade = [cv2.addWeighted(image, i / 10, start, 1 - i / 10, 0) for i in range(1, 11)]
    assert _cuts([start] * 5 + fade + [image] * 5) == []


def test_cuts_three_frames_apart_are_not_merged():
    astronaut = list(samples.astronaut_frames(10))
    frames = astronaut + [samples.colour_bars()] * 3 + _carphone(10)
    assert _cuts(frames) == [10, 13]


def test_a_cut_every_frame_is_reported_every_frame():
    a, b = next(samples.astronaut_frames(1)), samples.colour_bars()
    assert _cuts([a, b, a, b, a]) == [1, 2, 3, 4]


def test_720p_frames_give_the_same_cuts():
    size = (1280, 720)
    frames = [*samples.astronaut_frames(12, size), *_carphone(12, size)]
    detector = CutDetector(30000 / 1001)
    for frame in frames:
        detector.add(frame)
    assert detector.cuts() == [12]
    full = CutOptions(analysis_width=0)
    assert _cuts(frames, options=full) == [12]


def test_frames_narrower_than_the_analysis_width_are_used_as_they_are():
    frames = [*samples.astronaut_frames(6, (160, 120)), samples.colour_bars((160, 120))]
    assert _cuts(frames) == [6]


def test_empty_and_single_frame_inputs():
    assert _cuts([]) == []
    assert _cuts([samples.colour_bars()]) == []


def test_an_integer_frame_rate_is_accepted():
    # PySceneDetect 0.7's FrameTimecode refuses an int rate; the detector converts it.
    assert _cuts([samples.colour_bars(), np.zeros((240, 320, 3), np.uint8)], fps=25) == [1]


def test_cuts_is_final():
    detector = CutDetector(25.0)
    detector.add(samples.colour_bars())
    assert detector.cuts() == detector.cuts() == []
    with pytest.raises(UsageError, match="after cuts"):
        detector.add(samples.colour_bars())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 0}, "cut threshold is 0; expected a number > 0"),
        ({"threshold": -5.0}, "cut threshold is -5.0; expected a number > 0"),
        ({"threshold": float("nan")}, "cut threshold is nan"),
        ({"analysis_width": 16}, "cut analysis width is 16; expected 0 (full size) or >= 32 pixels"),
        ({"analysis_width": -1}, "cut analysis width is -1"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(UsageError) as info:
        CutOptions(**options)
    assert message in str(info.value)


@pytest.mark.parametrize("fps", [0.0, -25.0, float("nan")])
def test_bad_frame_rate(fps):
    with pytest.raises(UsageError, match="frame rate is"):
        CutDetector(fps)


def test_bad_frames():
    detector = CutDetector(25.0)
    with pytest.raises(UsageError, match=r"expected a \(height, width, 3\) uint8 BGR image"):
        detector.add(np.zeros((240, 320), np.uint8))
    detector = CutDetector(25.0)
    detector.add(samples.colour_bars())
    with pytest.raises(UsageError, match="like the first frame"):
        detector.add(samples.colour_bars((640, 480)))
    with pytest.raises(UsageError, match="like the first frame"):
        detector.add(samples.colour_bars().astype(np.float32))
