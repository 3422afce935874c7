"""The per-frame engine: audio window -> features -> batched model call -> composite -> encode.

One :class:`Engine` serves every loaded package, each with its own model from a
:class:`~lipsync_tools.engine.model_store.ModelStore` (a batch holds one model's frames; see
:mod:`.batcher` for the order models take turns in). :meth:`Engine.process` is the async entry point of the
server: requests from concurrent callers are batched (see :mod:`.batcher`) and run in one worker thread,
so the event loop only validates and hands over. :meth:`Engine.process_batch_sync` runs the same code
without an event loop (``render``, benchmarks).

The model call and the work after it overlap: a batch's compositing and encoding run in a small pool of
worker threads (``EngineOptions.post_workers``; OpenCV and libjpeg release the GIL) while the next batch's
model call runs; each of those threads composites into its own reused frame buffer (a raw reply gets a new
array: its payload is a view of it). A silent session frame is sent from the package's stored JPEG bytes,
without encoding.

Each reply carries ``timings`` in microseconds, in this order (names in :data:`STAGES`):
``features`` (this request's mel window), ``queue`` (arrival until its batch started), ``inference`` (the
batched model call this frame was part of: shared by the batch), ``composite``, ``encode`` and ``total``
(arrival at the engine until the reply was built).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..audio.mel import mel_from_pcm_window
from ..errors import LipsyncError, RequestError, UsageError
from ..models.backends import InferenceBackend
from .batcher import Batcher
from .compositor import CompositeScratch, encode_frame_image, paste_crop, silence_result
from .features import StreamAudio
from .model_loader import LoadedModel, ModelInfo
from .model_store import ModelStore, ServedModel
from .pacing import is_silent
from .requests import (
    PCM_WINDOW_SAMPLES,
    EngineRequest,
    EngineResult,
    ImageKind,
    Reason,
    check_frame_index,
    micros,
)
from .store import LoadedPackage, PackageStore

STAGES: tuple[str, ...] = ("features", "queue", "inference", "composite", "encode", "total")
"""Timing names of a model frame, in the order they appear in ``EngineResult.timings``."""

SILENT_STAGES: tuple[str, ...] = ("encode", "total")
"""Timing names of an original (silence) frame."""


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """How the engine batches and answers.

    ``max_batch``: most requests in one model call. ``max_wait_ms``: longest a batch waits for more
    requests after its first one arrived (0: never wait). ``queue_limit``: most requests waiting; one more
    is refused with ``overloaded``. ``jpeg_quality``: default JPEG quality where a caller does not give
    one (render previews, original frames). ``silence_dbfs``: RMS level below which a PCM window is
    silence (:func:`~lipsync_tools.engine.pacing.is_silent`). ``blend``: how a generated crop goes back
    into the frame: ``feather`` (the package's feathered blend mask) or ``hard`` (the whole crop pasted, as
    SyncTalk_2D's and Ultralight's own scripts do). ``post_workers``: threads that composite and encode
    finished batches while the next model call runs (0: in the model's thread, one after another).
    """

    max_batch: int = 8
    max_wait_ms: float = 4.0
    queue_limit: int = 64
    jpeg_quality: int = 90
    silence_dbfs: float = -50.0
    blend: str = "feather"
    post_workers: int = 2

    def __post_init__(self) -> None:
        if self.blend not in ("feather", "hard"):
            raise UsageError(f"blend is {self.blend!r}; expected feather or hard")
        if not 1 <= self.max_batch <= 256:
            raise UsageError(f"max_batch is {self.max_batch}; expected 1..256")
        if not 0.0 <= self.max_wait_ms <= 1000.0:
            raise UsageError(f"max_wait_ms is {self.max_wait_ms}; expected 0..1000 milliseconds")
        if not 1 <= self.queue_limit <= 100_000:
            raise UsageError(f"queue_limit is {self.queue_limit}; expected 1..100000")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"jpeg_quality is {self.jpeg_quality}; expected 1..100")
        if not 0 <= self.post_workers <= 64:
            raise UsageError(f"post_workers is {self.post_workers}; expected 0..64")
        if not -150.0 <= self.silence_dbfs <= 0.0:
            raise UsageError(f"silence_dbfs is {self.silence_dbfs}; expected -150..0 dBFS (-50 is typical)")


class Observer(Protocol):
    """Receives the engine's measurements (the server's metrics implement it). Called on the event loop."""

    def observe_stage(self, stage: str, seconds: float) -> None: ...

    def observe_batch(self, size: int) -> None: ...

    def set_queue_depth(self, depth: int) -> None: ...


@dataclass(eq=False)
class _Job:
    """One request on its way through a batch (worker-thread side)."""

    request: EngineRequest
    package: LoadedPackage
    arrived: float  # time.perf_counter() seconds
    timings: dict[str, int] = field(default_factory=dict)
    stream: StreamAudio | None = None  # a live session's audio (multi-frame audio windows)
    stream_frame: int = 0  # the session frame number this request renders
    model: ServedModel | None = None  # set before the job is queued


JobResult = EngineResult | BaseException | concurrent.futures.Future[EngineResult]
"""What the worker thread answers per job: a result, an error, or the pool's future of one."""

_POST_ALPHA = 0.1
"""Weight of one frame in the moving average of compositing + encoding time."""


def _stored_jpeg(package: LoadedPackage, image_format: ImageKind) -> list[bytes] | None:
    """The package's stored frames when they can answer ``image_format`` as they are (JPEG), else None."""
    if image_format is ImageKind.JPEG and package.frame_codec == "jpeg" and package.encoded_frames:
        return package.encoded_frames
    return None


class Engine:
    """Renders frames of the packages in ``store``; see the module docstring.

    ``models`` is a :class:`ModelStore` (many models, chosen per package) or one inference backend that
    serves every package of its family (then ``audio_encoder`` is its AVE encoder, if it needs one).
    ``await start()`` before :meth:`process` (it starts the batcher in the running loop);
    :meth:`process_batch_sync` needs no loop and no start.
    """

    def __init__(
        self,
        store: PackageStore,
        models: ModelStore | InferenceBackend,
        options: EngineOptions | None = None,
        observer: Observer | None = None,
        *,
        audio_encoder: object | None = None,
    ) -> None:
        self.store = store
        if not isinstance(models, ModelStore):
            info = ModelInfo(name="given", source="given", is_random=False, backend=models.name,
                             load_seconds=0.0, family=models.family.name, audio_mode=models.audio_mode.name)
            models = ModelStore.fixed(LoadedModel(backend=models, info=info, audio_encoder=audio_encoder))
        self.models = models
        self.options = options or EngineOptions()
        self.observer = observer
        self._compute_lock = threading.Lock()  # one model call at a time (the batch buffers are shared)
        self._post: ThreadPoolExecutor | None = None  # compositing + encoding pool, while serving
        self.post_seconds = 0.0  # moving average of composite + encode seconds per model frame
        self._local = threading.local()  # each thread that composites keeps its own CompositeScratch
        self._batcher: Batcher[_Job, EngineResult] = Batcher(
            self._run_jobs,
            max_batch=self.options.max_batch,
            max_wait_s=self.options.max_wait_ms / 1000.0,
            queue_limit=self.options.queue_limit,
            on_batch=observer.observe_batch if observer is not None else None,
            on_queue_depth=observer.set_queue_depth if observer is not None else None,
            thread_name="lipsync-infer",
            cost=self._batch_cost,
        )

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Warm the PCM feature path, then start batching in the running event loop (idempotent)."""
        await asyncio.to_thread(self.warm_up)
        if self.options.post_workers > 0 and self._post is None:
            self._post = ThreadPoolExecutor(self.options.post_workers, thread_name_prefix="lipsync-post")
        await self._batcher.start()

    def warm_up(self) -> None:
        """Run the PCM16 feature path once on silence.

        Its first call imports librosa and builds the mel filterbank (about 1.5 s); without this the first
        client to send PCM audio would wait for it. The model itself is warmed by its loader.
        """
        mel_from_pcm_window(np.zeros(PCM_WINDOW_SAMPLES, np.float32))

    async def stop(self) -> None:
        """Stop batching; requests still waiting get ``RequestError(overloaded)``."""
        await self._batcher.stop()
        post, self._post = self._post, None
        if post is not None:
            await asyncio.to_thread(post.shutdown, True)  # frames being encoded finish and are answered

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch right now."""
        return self._batcher.depth()

    @property
    def failure(self) -> BaseException | None:
        """Why the batching loop died, if it did (then every request fails with ``internal``)."""
        return self._batcher.failure

    def _batch_cost(self, key: object, size: int) -> float:
        """Seconds a batch of ``size`` frames of the model ``key`` takes, compositing included (the
        batcher keeps a batch small enough for its frames' deadlines with it)."""
        served = self.models.get(key) if isinstance(key, str) else None
        if served is None:
            return 0.0
        return served.capacity.batch_seconds(size) + self.post_seconds

    def expected_latency(self, model: ServedModel) -> float:
        """Seconds a frame submitted now for ``model`` is expected to take until its reply is ready.

        The rest of the running batch, the batches queued ahead of it, its own batch (from the model's
        :class:`~lipsync_tools.engine.capacity.Capacity`), and compositing and encoding. An estimate for
        sessions deciding whether a frame can still be on time; 0.0 while nothing was measured.
        """
        b, capacity, most = self._batcher, model.capacity, self.options.max_batch
        mine = b.key_depth(model.key)  # this model's waiting frames: full batches ahead, then ours
        others = b.depth() - mine  # other models' frames (approximated at this model's speed)
        own_size = mine % most + 1
        running = 0.0
        if b.running_since is not None:
            elapsed = asyncio.get_running_loop().time() - b.running_since
            running = max(0.0, capacity.batch_seconds(b.running_size) - elapsed)
            if b.running_key == model.key:
                # the sessions that filled the running batch keep sending while it runs: ours grows as big
                own_size = max(own_size, b.running_size)
        ahead = (-(-others // most) + mine // most) * capacity.batch_seconds(most)
        return running + ahead + self._batch_cost(model.key, min(most, own_size))

    # --- entry points ----------------------------------------------------------------------------------

    async def model_for(self, package_id: str) -> ServedModel:
        """The model serving ``package_id``, loaded first (in a worker thread) when it is not.

        Raises ``RequestError``: ``unknown_package``, ``bad_package`` (no model can serve it, or its
        checkpoint does not load).
        """
        package = self.store.get(package_id)
        key = self.models.key_of(package_id)
        served = self.models.get(key) if key is not None else None
        if served is not None:
            return served
        return await asyncio.to_thread(self._ensure, package)

    def _ensure(self, package: LoadedPackage) -> ServedModel:
        try:
            return self.models.ensure(package.info.id, package.package)
        except RequestError:
            raise
        except LipsyncError as exc:
            raise RequestError(Reason.BAD_PACKAGE, str(exc)) from exc

    async def open_stream(self, package_id: str) -> StreamAudio | None:
        """A :class:`StreamAudio` for a live session of ``package_id`` when its model's audio window spans
        several frames (AVE), else ``None``. The session adds frame ``k``'s window before asking for frame
        ``k - stream.look_ahead`` and passes the stream to :meth:`process`."""
        look_ahead = (await self.model_for(package_id)).features.look_ahead
        return StreamAudio(look_ahead) if look_ahead > 0 else None

    def open_stream_sync(self, package_id: str) -> StreamAudio | None:
        """:meth:`open_stream` without an event loop (an offline render)."""
        look_ahead = self._ensure(self.store.get(package_id)).features.look_ahead
        return StreamAudio(look_ahead) if look_ahead > 0 else None

    async def process(
        self,
        request: EngineRequest,
        *,
        skip_silence: bool = False,
        stream: StreamAudio | None = None,
        stream_frame: int = 0,
        deadline: float | None = None,
    ) -> EngineResult:
        """Render the frame ``request`` asks for (batched with concurrent callers).

        ``deadline`` (event-loop time): the reply must be ready by then; a frame no batch can finish in time
        is not rendered and :class:`~lipsync_tools.engine.batcher.Expired` is raised (live sessions).

        ``stream``/``stream_frame``: a live session's audio and the session frame this request renders
        (see :meth:`open_stream`); without them a PCM request is a one-shot window.
        With ``skip_silence``, a PCM16 window quieter than ``options.silence_dbfs`` gets the original frame
        instead (:meth:`original_frame`, ``result.silence`` true, no model call). Raises
        :class:`~lipsync_tools.errors.RequestError` with reason ``unknown_package``, ``frame_out_of_range``,
        ``bad_audio``, ``bad_request`` (crop size the model cannot take) or ``overloaded`` (queue full / not
        started).
        """
        arrived = time.perf_counter()
        package = self._validate(request)
        if skip_silence and request.is_silent(self.options.silence_dbfs):
            return await self.original_frame(
                request.package_id, request.frame_index, request.image, request.jpeg_quality
            )
        model = await self.model_for(request.package_id)
        self._check_model(package, model)
        result = await self._batcher.submit(
            _Job(request, package, arrived, stream=stream, stream_frame=stream_frame, model=model), model.key,
            deadline,
        )
        self._observe(result)
        return result

    async def original_frame(
        self,
        package_id: str,
        frame_index: int,
        image_format: ImageKind = ImageKind.JPEG,
        jpeg_quality: int | None = None,
    ) -> EngineResult:
        """The package's own frame, no model: the result for a silent window (``result.silence`` is true).

        JPEG/PNG encoding runs in a helper thread so the loop stays responsive. A crop result has no
        crop (0x0, no rect, empty payload: "show your own frame"). Raises ``RequestError`` for an unknown
        package or a frame out of range.
        """
        arrived = time.perf_counter()
        package = self.store.get(package_id)
        self._check_frame(package, frame_index)
        self._check_image(package, image_format)
        quality = jpeg_quality if jpeg_quality is not None else self.options.jpeg_quality
        encodes = image_format in (ImageKind.JPEG, ImageKind.PNG)
        if encodes and _stored_jpeg(package, image_format) is None:
            result = await asyncio.to_thread(
                self._original_result, package, frame_index, image_format, quality, arrived
            )
        else:
            result = self._original_result(package, frame_index, image_format, quality, arrived)
        self._observe(result)
        return result

    def original_frame_sync(
        self,
        package_id: str,
        frame_index: int,
        image_format: ImageKind = ImageKind.JPEG,
        jpeg_quality: int | None = None,
    ) -> EngineResult:
        """:meth:`original_frame` without an event loop."""
        arrived = time.perf_counter()
        package = self.store.get(package_id)
        self._check_frame(package, frame_index)
        self._check_image(package, image_format)
        quality = jpeg_quality if jpeg_quality is not None else self.options.jpeg_quality
        return self._original_result(package, frame_index, image_format, quality, arrived)

    def process_batch_sync(
        self,
        requests: list[EngineRequest],
        *,
        stream: StreamAudio | None = None,
        stream_frames: list[int] | None = None,
    ) -> list[EngineResult]:
        """Render ``requests`` in model calls of up to ``max_batch``, in the calling thread; replies in order.

        ``stream`` and ``stream_frames`` (one stream frame number per request): an offline render's audio
        for families whose window spans several frames (see :meth:`open_stream`).
        Every request is validated first; raises the first :class:`RequestError` found (nothing is
        rendered then). ``queue`` timings are 0.
        """
        arrived = time.perf_counter()
        frames = stream_frames if stream_frames is not None else [0] * len(requests)
        jobs = []
        for request, frame in zip(requests, frames, strict=True):
            package = self._validate(request)
            model = self._ensure(package)
            self._check_model(package, model)
            jobs.append(_Job(request, package, arrived, stream=stream, stream_frame=frame, model=model))
        replies: list[EngineResult] = []
        step = self.options.max_batch
        runs: list[list[_Job]] = []
        for job in jobs:  # consecutive jobs of one model share a call, in order
            if runs and runs[-1][0].model is job.model and len(runs[-1]) < step:
                runs[-1].append(job)
            else:
                runs.append([job])
        for run in runs:
            with self._compute_lock:
                results = self._run_jobs_locked(run, None)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
                assert isinstance(result, EngineResult)  # no pool: finished here
                replies.append(result)
        for reply in replies:
            self._observe(reply)
        return replies

    def _observe(self, result: EngineResult) -> None:
        if self.observer is not None:
            for stage, us in result.timings.items():
                self.observer.observe_stage(stage, us / 1e6)

    def is_silent(self, pcm_int16_window: np.ndarray) -> bool:
        """:func:`~lipsync_tools.engine.pacing.is_silent` at ``options.silence_dbfs``."""
        return is_silent(pcm_int16_window, self.options.silence_dbfs)

    # --- checks (event loop side: cheap, no allocation) --------------------------------------------------

    def _validate(self, request: EngineRequest) -> LoadedPackage:
        """The request's package, after the checks against it (the request checked its audio itself)."""
        package = self.store.get(request.package_id)
        self._check_frame(package, request.frame_index)
        self._check_image(package, request.image)
        package.usage.touch()  # the memory budget evicts the least recently used first
        return package

    @staticmethod
    def _check_image(package: LoadedPackage, image: ImageKind) -> None:
        """``bad_request`` for a full-frame image of a package loaded without its frames (crop-only)."""
        if not image.is_crop and not package.frames:
            raise RequestError(
                Reason.BAD_REQUEST,
                f"package {package.info.id!r} was loaded without its full frames (--frames none, for "
                f"crop-only serving); request image=crop_only or crop_jpeg, or load it with its frames",
            )

    @staticmethod
    def _check_model(package: LoadedPackage, model: ServedModel) -> None:
        """``bad_request`` when the package's crops or family are not what its model takes."""
        model.features.check_package(package)
        size = model.backend.crop_size
        if package.info.crop_size != size:
            raise RequestError(
                Reason.BAD_REQUEST,
                f"package {package.info.id!r} has {package.info.crop_size}-pixel crops but its model takes "
                f"{size}; rebuild it with --crop-size {size}",
            )

    @staticmethod
    def _check_frame(package: LoadedPackage, frame_index: int) -> None:
        check_frame_index("package", package.info.id, package.n_frames, frame_index)

    # --- the work (worker thread, or the caller's thread for the sync path) ------------------------------

    @staticmethod
    def _features(job: _Job) -> np.ndarray:
        """The network audio input of one request (family-specific shape, see :mod:`.features`)."""
        assert job.model is not None  # set when queued
        return job.model.features.network_audio(job.request, job.package, job.stream, job.stream_frame)

    def _run_jobs(self, jobs: list[_Job]) -> list[JobResult]:
        """Features and one model call for up to ``max_batch`` jobs; compositing and encoding follow in the
        post pool while serving (each result is then a future), else here."""
        with self._compute_lock:
            return self._run_jobs_locked(jobs, self._post)

    def _run_jobs_locked(self, jobs: list[_Job], post: ThreadPoolExecutor | None) -> list[JobResult]:
        started = time.perf_counter()
        model = jobs[0].model  # a batch holds one model's jobs (the batcher's key)
        assert model is not None and all(job.model is model for job in jobs)
        crop_buffer, audio_buffer = model.buffers(self.options.max_batch)
        results: list[JobResult | None] = [None] * len(jobs)
        batch: list[int] = []
        for k, job in enumerate(jobs):
            t0 = time.perf_counter()
            try:
                mel = self._features(job)
            except RequestError as exc:
                results[k] = exc
                continue
            except LipsyncError as exc:  # mel_from_pcm_window's UsageError: the audio is unusable
                results[k] = RequestError(Reason.BAD_AUDIO, str(exc))
                continue
            n = len(batch)
            audio_buffer[n] = mel
            crop_buffer[n] = job.package.crops[job.request.frame_index]
            batch.append(k)
            job.timings["features"] = micros(time.perf_counter() - t0)
            job.timings["queue"] = micros(started - job.arrived)
        if batch:
            n = len(batch)
            t0 = time.perf_counter()
            try:
                generated = model.backend.infer(crop_buffer[:n], audio_buffer[:n])
            except Exception as exc:
                error = RequestError(Reason.INTERNAL, f"the model failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                for k in batch:
                    results[k] = error
                batch = []
            seconds = time.perf_counter() - t0
            inference = micros(seconds)
            model.frames += len(batch)
            for k in batch:
                jobs[k].package.usage.frames += 1
            model.batches += 1
            model.inference_seconds += seconds
            if batch:
                model.capacity.observe(len(batch), seconds)
            for row, k in enumerate(batch):
                job = jobs[k]
                job.timings["inference"] = inference
                if post is not None:
                    results[k] = post.submit(self._finish_checked, job, generated[row])
                else:
                    try:
                        results[k] = self._finish_checked(job, generated[row])
                    except RequestError as exc:
                        results[k] = exc
        return [r if r is not None else RequestError(Reason.INTERNAL, "no result") for r in results]

    def _finish_checked(self, job: _Job, generated: np.ndarray) -> EngineResult:
        """:meth:`_finish`; any failure becomes ``RequestError(internal)``."""
        try:
            return self._finish(job, generated)
        except Exception as exc:
            raise RequestError(
                Reason.INTERNAL, f"compositing failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _scratch(self) -> CompositeScratch:
        """This thread's reusable compositing buffers (made on its first frame)."""
        scratch: CompositeScratch | None = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = CompositeScratch()
        return scratch

    def _finish(self, job: _Job, generated: np.ndarray) -> EngineResult:
        """Composite and encode one generated crop (a post worker, or the model's thread)."""
        request, package = job.request, job.package
        index = request.frame_index
        t0 = time.perf_counter()
        feather = self.options.blend == "feather"
        scratch = self._scratch()
        rect: tuple[int, int, int, int] | None = None
        if request.image.is_crop:
            source = package.crops[index]
            side = int(source.shape[0])
            paste_rect, mask = (0, 0, side, side), package.crop_masks[index] if feather else None
            rect = package.rects[index]
        else:
            source = package.frames[index]
            paste_rect, mask = package.rects[index], package.rect_masks[index] if feather else None
        if request.image in (ImageKind.RAW_BGR, ImageKind.CROP_ONLY):
            image = np.empty(source.shape, np.uint8)  # the payload is a view of it: never a reused buffer
        else:
            image = scratch.frame(source.shape)  # JPEG and PNG bytes are new: the buffer is free again after
        np.copyto(image, source)
        paste_crop(image, generated, paste_rect, mask, scratch)
        t1 = time.perf_counter()
        payload = encode_frame_image(image, request.image, request.jpeg_quality)
        t2 = time.perf_counter()
        timings = job.timings
        timings["composite"] = micros(t1 - t0)
        timings["encode"] = micros(t2 - t1)
        self.post_seconds += _POST_ALPHA * ((t2 - t0) - self.post_seconds)
        timings["total"] = micros(t2 - job.arrived)
        ordered = {stage: timings[stage] for stage in STAGES}
        return EngineResult(
            frame_index=index, image=request.image, width=int(image.shape[1]), height=int(image.shape[0]),
            timings=ordered, rect=rect, payload=payload,
        )

    @staticmethod
    def _original_result(
        package: LoadedPackage, index: int, image_format: ImageKind, quality: int, arrived: float
    ) -> EngineResult:
        stored = _stored_jpeg(package, image_format)  # the package's own JPEG, not encoded again
        # frames are read-only: a raw payload is a view of the package's frame
        return silence_result(index, image_format, package.frames[index] if package.frames else _NO_FRAME,
                              quality, arrived=arrived, stored=None if stored is None else stored[index])


_NO_FRAME = np.zeros((0, 0, 3), np.uint8)
"""The frame of a crop-only package (no frames in RAM): only crop requests reach it, and they get none."""
