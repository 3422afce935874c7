"""The offline build: one module per stage, each a pure function; :mod:`.build` composes them.

``build_package(video, output)`` (:mod:`lipsync_tools.pipeline.build`) is the entry point; the stages
(detect, segments, track, smooth, crop, masks, features) are not meant to be called one by one, and this
package imports none of them eagerly (they load mediapipe, OpenCV and PyAV).
"""
