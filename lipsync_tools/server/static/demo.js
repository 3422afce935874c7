// The lipsync demo page: streams 16 kHz PCM to /v1/stream (binary protocol, version 2, docs/protocol.md)
// and draws every frame it gets back at the moment its audio plays. The audio clock is the master:
//
//   t0  = AudioContext time of the first sample sent (the capture worklet stamps every block);
//   D   = playout delay = session_started.max_lag_ms + PLAYOUT_MARGIN_MS: the page plays the audio it
//         sends D late, so a frame the server delivers within its bound arrives before its audio plays;
//   sample s of the session's audio plays at  t0 + D + s / 16000  (AudioContext time);
//   a frame whose audio_offset is a is drawn by the first animation frame at which the audible clock
//   (getOutputTimestamp(), i.e. what the speakers play now) has reached t0 + D + a / 16000.
//
// A/V offset of a drawn frame = audible clock when drawn - its play time; lag = arrival on the same clock
// - (t0 + a / 16000), the frame's lateness relative to its audio without the playout delay.
//
// Plain script, no framework, nothing from another origin. The codec is exported as window.lipsyncCodec
// and the statistics as window.lipsyncStats (tests/server/test_demo.py reads both).
"use strict";

(function () {
  // --- the binary codec ----------------------------------------------------------------------------------

  const PROTOCOL_VERSION = 2;
  const ERROR_REPLY_VERSIONS = [1, 2]; // versions whose error_reply reads like ours (limits.py)
  const HEADER_SIZE = 32;
  const MAGIC = [0x4c, 0x53, 0x59, 0x4e]; // "LSYN"
  const SAMPLE_RATE = 16000;
  const TYPE = {
    FRAME_REQUEST: 1, FRAME_REPLY: 2, ERROR_REPLY: 3, SESSION_START: 4, SESSION_STARTED: 5,
    AUDIO_CHUNK: 6, SESSION_END: 7,
  };
  const TYPE_NAMES = [null, "frame_request", "frame_reply", "error_reply", "session_start",
    "session_started", "audio_chunk", "session_end"];
  const IMAGE = { JPEG: 1, PNG: 2, RAW_BGR: 3, CROP_ONLY: 4, CROP_JPEG: 5 };
  const PACING = { REALTIME: 1, UNPACED: 2 };
  const FLAG_SILENCE = 0x1;
  const FLAG_TIMELINE = 0x2;
  const MAX_PACKAGE_ID_LEN = 64;
  const MAX_FIELDS_LEN = 2048;
  const MAX_AUDIO_CHUNK_BYTES = 1 << 20;
  const MAX_PAYLOAD = [0, 16 << 20, 64 << 20, 4096, 0, 0, 1 << 20, 0];
  const MAX_TIMINGS = 32;
  const PACKAGE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
  // fixed field-block sizes; frame_reply (25 + timings) and error_reply (1 + code) vary
  const FIXED_FIELDS = { 1: 1, 4: 2, 5: 20, 6: 0, 7: 8 };
  const REPLY_FIELDS = 25;
  const HAS_PACKAGE_ID = [1, 4, 5];
  const HAS_FRAME_INDEX = [1, 2, 4];
  const HAS_IMAGE = [1, 2, 4];

  class ProtocolError extends Error {
    constructor(code, message) {
      super(message);
      this.name = "ProtocolError";
      this.code = code;
    }
  }

  function fail(code, message) {
    throw new ProtocolError(code, message);
  }

  function checkUint(name, value, max, min = 0) {
    if (!Number.isInteger(value) || value < min || value > max) {
      fail("bad_field", `${name} must be an integer in [${min}, ${max}], got ${value}`);
    }
  }

  function asciiBytes(text) {
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  function readAscii(bytes, what) {
    let text = "";
    for (const b of bytes) {
      if (b > 127) fail("bad_field", `${what} is not ASCII`);
      text += String.fromCharCode(b);
    }
    return text;
  }

  function encodeMessage(type, parts) {
    const pid = asciiBytes(parts.packageId || "");
    const fields = parts.fields || new Uint8Array(0);
    const payloadLength = parts.payloadLength || 0;
    const total = HEADER_SIZE + pid.length + fields.length + payloadLength;
    const buffer = new ArrayBuffer(total);
    const view = new DataView(buffer);
    const bytes = new Uint8Array(buffer);
    bytes.set(MAGIC, 0);
    view.setUint8(4, PROTOCOL_VERSION);
    view.setUint8(5, type);
    view.setUint32(8, parts.requestId, true);
    view.setUint16(12, pid.length, true);
    view.setUint32(14, parts.frameIndex || 0, true);
    view.setUint8(19, parts.image || 0);
    view.setUint16(20, fields.length, true);
    view.setUint32(24, payloadLength, true);
    bytes.set(pid, HEADER_SIZE);
    bytes.set(fields, HEADER_SIZE + pid.length);
    return { buffer, view, payloadAt: HEADER_SIZE + pid.length + fields.length };
  }

  /** session_start: {requestId, packageId, startFrame = 0, image = JPEG, jpegQuality = 85, pacing = REALTIME}. */
  function encodeSessionStart(options) {
    const { requestId, packageId, startFrame = 0, image = IMAGE.JPEG, jpegQuality = 85,
      pacing = PACING.REALTIME } = options;
    checkUint("request_id", requestId, 0xffffffff);
    if (typeof packageId !== "string" || !PACKAGE_ID.test(packageId)) {
      fail("bad_field", `package id ${JSON.stringify(packageId)} is not 1-64 characters of A-Z a-z 0-9 . _ -`);
    }
    checkUint("start_frame", startFrame, 0xffffffff);
    checkUint("image", image, 5, 1);
    checkUint("jpeg_quality", jpegQuality, 100, 1);
    checkUint("pacing", pacing, 2, 1);
    const fields = new Uint8Array([jpegQuality, pacing]);
    return encodeMessage(TYPE.SESSION_START, { requestId, packageId, frameIndex: startFrame, image, fields })
      .buffer;
  }

  /** audio_chunk of Int16Array ``pcm`` (16 kHz mono), written little-endian. */
  function encodeAudioChunk(requestId, pcm) {
    checkUint("request_id", requestId, 0xffffffff);
    if (!(pcm instanceof Int16Array) || pcm.length === 0 || pcm.length * 2 > MAX_AUDIO_CHUNK_BYTES) {
      fail("bad_audio", "an audio chunk is 1 to 524288 int16 samples");
    }
    const msg = encodeMessage(TYPE.AUDIO_CHUNK, { requestId, payloadLength: pcm.length * 2 });
    for (let i = 0; i < pcm.length; i++) msg.view.setInt16(msg.payloadAt + 2 * i, pcm[i], true);
    return msg.buffer;
  }

  /** session_end: a client sends 0 and 0 (the server answers with its own counts). */
  function encodeSessionEnd(requestId, framesSent = 0, framesDropped = 0) {
    checkUint("request_id", requestId, 0xffffffff);
    checkUint("frames_sent", framesSent, 0xffffffff);
    checkUint("frames_dropped", framesDropped, 0xffffffff);
    const fields = new Uint8Array(8);
    const view = new DataView(fields.buffer);
    view.setUint32(0, framesSent, true);
    view.setUint32(4, framesDropped, true);
    return encodeMessage(TYPE.SESSION_END, { requestId, fields }).buffer;
  }

  function asBytes(data) {
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (Array.isArray(data)) return new Uint8Array(data);
    return fail("bad_magic", `binary messages are bytes, got ${typeof data}`);
  }

  /**
   * The message in ``data`` (ArrayBuffer, typed array or array of bytes), checked in the order
   * docs/protocol.md gives; throws ProtocolError(code) at the first problem. Payloads are views (no copy).
   */
  function decode(data) {
    const bytes = asBytes(data);
    const size = bytes.length;
    for (let i = 0; i < Math.min(size, 4); i++) {
      if (bytes[i] !== MAGIC[i]) fail("bad_magic", "message does not start with LSYN");
    }
    if (size < 5) fail("truncated", `message is ${size} bytes, shorter than the ${HEADER_SIZE}-byte header`);
    const version = bytes[4];
    const type = bytes[5];
    const versionOk = version === PROTOCOL_VERSION
      || (type === TYPE.ERROR_REPLY && ERROR_REPLY_VERSIONS.includes(version));
    if (!versionOk) {
      fail("unsupported_version", `message has protocol version ${version}, this page speaks version `
        + `${PROTOCOL_VERSION}; use a server of the same protocol version`);
    }
    if (size < HEADER_SIZE) fail("truncated", `message is ${size} bytes, shorter than the header`);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const flags = view.getUint16(6, true);
    const requestId = view.getUint32(8, true);
    const pidLen = view.getUint16(12, true);
    const frameIndex = view.getUint32(14, true);
    const audio = bytes[18];
    const image = bytes[19];
    const fieldsLen = view.getUint16(20, true);
    const payloadLen = view.getUint32(24, true);
    if (bytes[22] || bytes[23] || view.getUint32(28, true)) {
      fail("bad_field", "reserved header bytes 22-23 and 28-31 must be zero");
    }
    if (type < 1 || type > 7) fail("bad_type", `unknown message type ${type}; known types are 1-7`);
    const name = TYPE_NAMES[type];
    if (pidLen > MAX_PACKAGE_ID_LEN) fail("bad_field", `package id length ${pidLen} exceeds 64`);
    if (fieldsLen > MAX_FIELDS_LEN) fail("oversize", `field block length ${fieldsLen} exceeds 2048`);
    if (payloadLen > MAX_PAYLOAD[type]) {
      fail("oversize", `${name} payload length ${payloadLen} exceeds ${MAX_PAYLOAD[type]}`);
    }
    const total = HEADER_SIZE + pidLen + fieldsLen + payloadLen;
    if (size < total) fail("truncated", `message is ${size} bytes, its header says ${total}`);
    if (size > total) fail("trailing_data", `message is ${size} bytes, its header says ${total}`);
    const allowedFlags = type === TYPE.FRAME_REPLY ? FLAG_SILENCE | FLAG_TIMELINE : 0;
    if (flags & ~allowedFlags) fail("bad_field", `${name} has unknown flags 0x${flags.toString(16)}`);
    if (pidLen && !HAS_PACKAGE_ID.includes(type)) fail("bad_field", `${name} carries no package id`);
    if (frameIndex && !HAS_FRAME_INDEX.includes(type)) fail("bad_field", `${name} carries no frame index`);
    if (audio && type !== TYPE.FRAME_REQUEST) fail("bad_field", `${name} carries no audio format`);
    if (image && !HAS_IMAGE.includes(type)) fail("bad_field", `${name} carries no image format`);
    if (type in FIXED_FIELDS && fieldsLen !== FIXED_FIELDS[type]) {
      fail("bad_field", `${name} field block must be ${FIXED_FIELDS[type]} bytes, the header says ${fieldsLen}`);
    }
    const packageId = readAscii(bytes.subarray(HEADER_SIZE, HEADER_SIZE + pidLen), "package id");
    const at = HEADER_SIZE + pidLen; // field block offset
    const payload = bytes.subarray(at + fieldsLen, total);
    const msg = { type: name, version, requestId };
    switch (type) {
      case TYPE.FRAME_REPLY:
        return Object.assign(msg, decodeReply(view, at, fieldsLen, frameIndex, image, flags), { payload });
      case TYPE.ERROR_REPLY: {
        if (fieldsLen < 1 || bytes[at] !== fieldsLen - 1) {
          fail("bad_field", "error_reply fields must be one length byte and the error code");
        }
        let message;
        try {
          message = new TextDecoder("utf-8", { fatal: true }).decode(payload);
        } catch (error) {
          fail("bad_field", "error message is not valid UTF-8");
        }
        return Object.assign(msg, { code: readAscii(bytes.subarray(at + 1, at + fieldsLen), "code"), message });
      }
      case TYPE.SESSION_STARTED:
        return Object.assign(msg, {
          packageId,
          fps: view.getFloat64(at, true),
          frameCount: view.getUint32(at + 8, true),
          width: view.getUint16(at + 12, true),
          height: view.getUint16(at + 14, true),
          maxLagMs: view.getUint32(at + 16, true),
        });
      case TYPE.SESSION_END:
        return Object.assign(msg, {
          framesSent: view.getUint32(at, true), framesDropped: view.getUint32(at + 4, true),
        });
      case TYPE.SESSION_START:
        return Object.assign(msg, {
          packageId, startFrame: frameIndex, image, jpegQuality: bytes[at], pacing: bytes[at + 1],
        });
      case TYPE.AUDIO_CHUNK:
        return Object.assign(msg, { payload });
      default: // FRAME_REQUEST
        return Object.assign(msg, { packageId, frameIndex, audio, image, jpegQuality: bytes[at], payload });
    }
  }

  function decodeReply(view, at, fieldsLen, frameIndex, image, flags) {
    if (fieldsLen < REPLY_FIELDS) fail("bad_field", `frame_reply field block must be at least ${REPLY_FIELDS} bytes`);
    if (image < 1 || image > 5) fail("bad_field", `unknown image format ${image}`);
    const u16 = (k) => view.getUint16(at + 2 * k, true);
    const [width, height, x0, y0, x1, y1] = [0, 1, 2, 3, 4, 5].map(u16);
    const sessionFrame = view.getUint32(at + 12, true);
    const low = view.getUint32(at + 16, true);
    const high = view.getUint32(at + 20, true);
    if (high >= 0x200000) fail("bad_field", "audio offset exceeds 2^53 - 1");
    const audioOffset = high * 0x100000000 + low;
    const timeline = Boolean(flags & FLAG_TIMELINE);
    if (!timeline && (sessionFrame || audioOffset)) {
      fail("bad_field", "frame_reply without FLAG_TIMELINE must have session frame and audio offset 0");
    }
    const count = view.getUint8(at + 24);
    if (count > MAX_TIMINGS) fail("bad_field", `${count} timing entries, the limit is ${MAX_TIMINGS}`);
    const timings = {};
    const fields = new Uint8Array(view.buffer, view.byteOffset + at, fieldsLen);
    let offset = REPLY_FIELDS;
    for (let i = 0; i < count; i++) {
      if (offset >= fieldsLen) fail("bad_field", "frame_reply field block ends inside the timings");
      const nameLen = fields[offset];
      const end = offset + 1 + nameLen + 4;
      if (nameLen > 32 || end > fieldsLen) fail("bad_field", `timing entry at field offset ${offset} is cut off`);
      const stage = readAscii(fields.subarray(offset + 1, offset + 1 + nameLen), "stage name");
      if (stage in timings) fail("bad_field", `stage ${stage} appears twice in the timings`);
      timings[stage] = view.getUint32(at + end - 4, true);
      offset = end;
    }
    if (offset !== fieldsLen) fail("bad_field", "frame_reply field block has bytes after the timings");
    const rect = x0 || y0 || x1 || y1 ? [x0, y0, x1, y1] : null;
    return {
      frameIndex, image, width, height, rect, silence: Boolean(flags & FLAG_SILENCE), timeline,
      sessionFrame: timeline ? sessionFrame : null, audioOffset: timeline ? audioOffset : null, timings,
    };
  }

  /** The frames container of GET /v1/packages/{id}/frames (server/demo.py): views into ``data``. */
  function decodeFramesContainer(data) {
    const bytes = asBytes(data);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.length < 28 || readAscii(bytes.subarray(0, 4), "magic") !== "LSFR") {
      fail("bad_magic", "the frames answer does not start with LSFR");
    }
    if (bytes[4] !== 1) fail("unsupported_version", `frames container version ${bytes[4]}, this page reads 1`);
    const codec = { 1: "image/jpeg", 2: "image/png" }[bytes[5]];
    if (!codec) fail("bad_field", `unknown frames codec ${bytes[5]}`);
    const count = view.getUint32(8, true);
    const width = view.getUint32(12, true);
    const height = view.getUint32(16, true);
    const fps = view.getFloat64(20, true);
    let offset = 28 + 4 * count;
    if (offset > bytes.length) fail("truncated", "the frames answer ends inside its length table");
    const images = [];
    for (let i = 0; i < count; i++) {
      const length = view.getUint32(28 + 4 * i, true);
      if (offset + length > bytes.length) fail("truncated", `the frames answer ends inside frame ${i}`);
      images.push(bytes.subarray(offset, offset + length));
      offset += length;
    }
    if (offset !== bytes.length) fail("trailing_data", "the frames answer is longer than its lengths say");
    return { codec, count, width, height, fps, images, bytes: bytes.length };
  }

  /** Float32 samples in [-1, 1] as int16 (clipped). */
  function floatToPcm16(samples) {
    const out = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      out[i] = Math.round(s * 32767);
    }
    return out;
  }

  window.lipsyncCodec = {
    PROTOCOL_VERSION, TYPE, IMAGE, PACING, FLAG_SILENCE, FLAG_TIMELINE, ProtocolError,
    encodeSessionStart, encodeAudioChunk, encodeSessionEnd, decode, decodeFramesContainer, floatToPcm16,
  };

  // --- the page ----------------------------------------------------------------------------------------

  const PLAYOUT_MARGIN_MS = 60;
  const DEFAULT_MAX_LAG_MS = 500; // when a server states no bound (max_lag_ms 0)
  const AVATAR_CACHE = 32; // decoded avatar frames kept (crop-only); never all of them
  const STATS_EVERY_MS = 250;

  // What each error code means for the person at the page (they also see the server's message).
  const HINTS = {
    overloaded: "The server is busy and refused the session.",
    unknown_package: "This avatar is not loaded on the server; reload the list.",
    too_slow: "This page did not read its frames fast enough and the server dropped the session.",
    idle_timeout: "No audio reached the server for too long, so it closed the session.",
    unauthorized: "The token is missing or wrong: enter the server's --token above.",
    unsupported_version: "This page and the server speak different protocol versions.",
    bad_package: "The server cannot serve this avatar.",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("controls"), token: $("token"), avatar: $("avatar"), refresh: $("refresh"), file: $("file"),
    mute: $("mute"), quality: $("quality"), start: $("start"), stop: $("stop"), canvas: $("canvas"),
    state: $("state"), errors: $("errors"),
  };
  const draw2d = ui.canvas.getContext("2d");
  const bytesByMode = { jpeg: null, crop: null }; // last run's mean payload bytes per mode
  const framesDownloads = new Map(); // package id (+ token) -> decoded frames container
  let audioContext = null;
  let workletLoaded = null;
  let current = null; // the running Run

  function freshStats(mode, source, packageId) {
    return {
      mode, source, packageId, framesReceived: 0, framesDrawn: 0, framesDropped: 0, framesLate: 0,
      framesSuperseded: 0, fps: 0, lagMsMedian: null, lagMsMax: null, avOffsetMsMedian: null,
      avOffsetMsMaxAbs: null, lateOffsetMsMax: null, bytesPerFrame: null, framesDownloadBytes: null,
      playoutDelayMs: null, maxLagMs: null, errors: [], ended: false, sessionEnd: null,
    };
  }
  window.lipsyncStats = freshStats(null, null, null);

  function median(values) {
    if (!values.length) return null;
    const sorted = Float64Array.from(values).sort();
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  const ms = (v) => (v === null ? "-" : `${v.toFixed(1)} ms`);
  const kb = (v) => (v === null ? "-" : v < 10000 ? `${Math.round(v)} B` : `${(v / 1024).toFixed(1)} KiB`);

  function setState(text) {
    ui.state.textContent = text;
  }

  function showError(code, message) {
    const p = document.createElement("p");
    p.textContent = `${HINTS[code] ? HINTS[code] + " " : ""}${message} (${code})`;
    ui.errors.append(p);
  }

  function clearErrors() {
    ui.errors.replaceChildren();
  }

  function authHeaders() {
    const token = ui.token.value.trim();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  /** An error_reply body (JSON) of a failed fetch as a ProtocolError. */
  async function httpError(response) {
    let code = "internal";
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.code) ({ code, message } = body);
    } catch (error) {
      // not JSON: keep the status
    }
    return new ProtocolError(code, message);
  }

  async function loadPackages() {
    const selected = ui.avatar.value;
    try {
      const response = await fetch("/v1/packages", { headers: authHeaders(), cache: "no-store" });
      if (!response.ok) throw await httpError(response);
      const { packages } = await response.json();
      ui.avatar.replaceChildren(...packages.map((p) => {
        const option = new Option(`${p.id} (${p.width}x${p.height}, ${p.n_frames} frames at ${p.fps} fps)`, p.id);
        option.dataset.frames = p.frames || "all";
        return option;
      }));
      if (packages.some((p) => p.id === selected)) ui.avatar.value = selected;
      if (!packages.length) setState("The server has no avatar loaded.");
      else if (!current) setState("Ready: pick an avatar and press Start.");
    } catch (error) {
      showError(error.code || "internal", `Cannot list the avatars: ${error.message}`);
    }
  }

  async function loadFrames(packageId) {
    const key = `${packageId}\n${ui.token.value.trim()}`;
    if (!framesDownloads.has(key)) {
      const response = await fetch(`/v1/packages/${encodeURIComponent(packageId)}/frames`,
        { headers: authHeaders(), cache: "no-store" });
      if (!response.ok) throw await httpError(response);
      framesDownloads.clear(); // one avatar's frames at a time
      framesDownloads.set(key, decodeFramesContainer(await response.arrayBuffer()));
    }
    return framesDownloads.get(key);
  }

  async function getAudioContext() {
    if (!audioContext) audioContext = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: "interactive" });
    if (audioContext.state !== "running") await audioContext.resume();
    return audioContext;
  }

  /** The audible AudioContext time at performance time ``perfNow`` (ms): what the speakers play then. */
  function audibleTime(ctx, perfNow) {
    const stamp = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
    if (stamp && stamp.performanceTime > 0) return stamp.contextTime + (perfNow - stamp.performanceTime) / 1000;
    return ctx.currentTime - (ctx.outputLatency || 0);
  }

  /**
   * A capture node: calls ``onBlock(time, float32)`` with consecutive mono blocks and the context time of
   * each block's first sample; ``flush()`` resolves once the last samples were delivered. An AudioWorklet
   * where the browser has one (secure contexts), else a ScriptProcessorNode (its times are approximate:
   * within one 512-sample buffer).
   */
  async function makeCapture(ctx, onBlock) {
    const mono = { channelCount: 1, channelCountMode: "explicit", channelInterpretation: "speakers" };
    if (ctx.audioWorklet) {
      workletLoaded = workletLoaded || ctx.audioWorklet.addModule("/demo/capture-worklet.js");
      await workletLoaded;
      const node = new AudioWorkletNode(ctx, "lipsync-capture",
        { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], ...mono });
      let flushed = null;
      node.port.onmessage = (event) => {
        if (event.data.done) flushed && flushed();
        else onBlock(event.data.time, event.data.samples);
      };
      return {
        node,
        flush: () => new Promise((resolve) => {
          flushed = resolve;
          node.port.postMessage("flush");
        }),
        close: () => node.port.postMessage("flush"), // lets the processor end
      };
    }
    const size = 512;
    const node = ctx.createScriptProcessor(size, 1, 1);
    Object.assign(node, mono);
    let open = true;
    node.onaudioprocess = (event) => {
      if (open) onBlock(event.playbackTime - size / ctx.sampleRate, event.inputBuffer.getChannelData(0).slice());
    };
    return { node, flush: async () => { open = false; }, close: () => { open = false; } };
  }

  /** An LRU of decoded avatar frames (crop-only mode), from the downloaded container. */
  class AvatarFrames {
    constructor(container) {
      this.container = container;
      this.cache = new Map(); // frame index -> {promise, bitmap}
    }

    get(index, inUse) {
      let entry = this.cache.get(index);
      if (entry) {
        this.cache.delete(index);
      } else {
        if (index >= this.container.count) {
          throw new ProtocolError("bad_field", `frame ${index} is beyond the avatar's ${this.container.count} frames`);
        }
        entry = { bitmap: null };
        const blob = new Blob([this.container.images[index]], { type: this.container.codec });
        entry.promise = createImageBitmap(blob).then((bitmap) => (entry.bitmap = bitmap));
      }
      this.cache.set(index, entry);
      for (const [old, value] of this.cache) {
        if (this.cache.size <= AVATAR_CACHE) break;
        this.cache.delete(old);
        if (value.bitmap && !inUse(old)) value.bitmap.close(); // a queued frame still holding it: left to GC
      }
      return entry.promise;
    }
  }

  /** One session: audio in, frames out, drawn on the audio clock. */
  class Run {
    constructor({ packageId, mode, source, file, quality }) {
      this.packageId = packageId;
      this.mode = mode;
      this.source = source;
      this.file = file;
      this.quality = quality;
      this.stats = window.lipsyncStats = freshStats(mode, source, packageId);
      this.seq = 1; // request ids of the messages this page sends
      this.queue = []; // frames waiting for their play time, in session order
      this.lags = [];
      this.offsets = []; // A/V offsets (ms) of frames drawn that arrived on time
      this.lateOffsets = [];
      this.arrivals = []; // performance.now() of recent frames, for the delivered fps
      this.payloadBytes = 0;
      this.lastSessionFrame = -1;
      this.gaps = 0;
      this.t0 = null;
      this.delay = null;
      this.capturing = false;
      this.audioDone = false;
      this.serverEnded = false;
      this.closed = false;
      this.finished = false;
      this.nodes = [];
      this.lastStats = 0;
    }

    async start() {
      setState("Preparing audio…");
      const ctx = this.ctx = await getAudioContext();
      if (this.mode === "crop") {
        setState("Downloading the avatar's frames (once)…");
        const container = await loadFrames(this.packageId);
        this.avatar = new AvatarFrames(container);
        this.stats.framesDownloadBytes = container.bytes;
      }
      if (this.source === "mic") {
        if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
          throw new ProtocolError("no_microphone", "The microphone needs a secure page (https or localhost).");
        }
        this.stream = await navigator.mediaDevices.getUserMedia({
          audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
        });
        this.input = ctx.createMediaStreamSource(this.stream);
      } else {
        if (!this.file) throw new ProtocolError("no_file", "Choose an audio file first.");
        const buffer = await ctx.decodeAudioData(await this.file.arrayBuffer());
        this.input = new AudioBufferSourceNode(ctx, { buffer });
        this.input.onended = () => this.finishAudio();
      }
      this.capture = await makeCapture(ctx, (time, samples) => this.onBlock(time, samples));
      if (this.finished) return; // stopped meanwhile
      setState("Connecting…");
      this.connect();
    }

    connect() {
      const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream`;
      const token = ui.token.value.trim();
      try {
        this.ws = new WebSocket(url, token ? ["lipsync", `bearer.${token}`] : ["lipsync"]);
      } catch (error) {
        // a token with characters a subprotocol cannot carry goes in the query string instead
        this.ws = new WebSocket(`${url}?token=${encodeURIComponent(token)}`, ["lipsync"]);
      }
      this.ws.binaryType = "arraybuffer";
      this.ws.onopen = () => {
        // crop_jpeg: the mouth crop as a small JPEG (crop_only would send it as raw pixels)
        const image = this.mode === "crop" ? IMAGE.CROP_JPEG : IMAGE.JPEG;
        try {
          this.ws.send(encodeSessionStart({
            requestId: this.seq++, packageId: this.packageId, image, jpegQuality: this.quality,
            pacing: PACING.REALTIME,
          }));
        } catch (error) {
          this.fail(error.code || "bad_field", `Could not start the session: ${error.message}`);
        }
      };
      this.ws.onmessage = (event) => this.onMessage(event.data);
      this.ws.onclose = (event) => this.onClose(event);
    }

    onMessage(data) {
      if (this.finished) return;
      let msg;
      try {
        if (typeof data === "string") {
          // the server answers in the encoding it was spoken to; only a refused upgrade arrives as JSON
          msg = JSON.parse(data);
          msg.type = String(msg.type);
        } else {
          msg = decode(data);
        }
      } catch (error) {
        this.fail(error.code || "bad_field", `The server sent a message this page cannot read: ${error.message}`);
        return;
      }
      switch (msg.type) {
        case "session_started":
          this.begin(msg);
          break;
        case "frame_reply":
          this.onFrame(msg);
          break;
        case "error_reply":
          this.fail(msg.code, msg.message);
          break;
        case "session_end":
          this.serverEnded = true;
          this.stats.sessionEnd = { framesSent: msg.framesSent, framesDropped: msg.framesDropped };
          setState("Audio over: drawing the last frames…");
          break;
        default:
          this.fail("unexpected_message", `The server sent a ${msg.type}, which this page does not expect.`);
      }
    }

    begin(started) {
      const ctx = this.ctx;
      const maxLag = started.maxLagMs || DEFAULT_MAX_LAG_MS;
      this.fps = started.fps;
      this.delay = (maxLag + PLAYOUT_MARGIN_MS) / 1000;
      this.stats.maxLagMs = started.maxLagMs;
      this.stats.playoutDelayMs = maxLag + PLAYOUT_MARGIN_MS;
      ui.canvas.width = started.width;
      ui.canvas.height = started.height;
      // source -> capture (sent); source -> delay D -> gain -> speakers (the clock everything is drawn by)
      const delay = new DelayNode(ctx, { delayTime: this.delay, maxDelayTime: this.delay + 1 });
      this.gain = new GainNode(ctx, { gain: this.source === "mic" && ui.mute.checked ? 0 : 1 });
      this.input.connect(this.capture.node);
      this.capture.node.connect(ctx.destination); // its output is silent; connected so it keeps running
      this.input.connect(delay).connect(this.gain).connect(ctx.destination);
      this.nodes = [this.input, this.capture.node, delay, this.gain];
      this.capturing = true;
      if (this.source === "file") this.input.start();
      ui.stop.disabled = false;
      setState(`Streaming ${this.source === "mic" ? "the microphone" : "the file"} to ${this.packageId} at `
        + `${started.fps} fps, ${this.mode === "crop" ? "crop-only" : "full JPEG"} frames.`);
      requestAnimationFrame((now) => this.tick(now));
    }

    onBlock(time, samples) {
      if (!this.capturing || this.ws.readyState !== WebSocket.OPEN) return;
      if (this.t0 === null) this.t0 = time;
      this.ws.send(encodeAudioChunk(this.seq++, floatToPcm16(samples)));
    }

    /** No more audio: the last samples go out, then session_end; frames keep coming until the server's. */
    async finishAudio() {
      if (this.audioDone || !this.capture || this.finished) return;
      this.audioDone = true;
      await this.capture.flush();
      this.capturing = false;
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(encodeSessionEnd(this.seq++));
      setState("Audio over: waiting for the last frames…");
    }

    onFrame(msg) {
      const stats = this.stats;
      const now = performance.now();
      stats.framesReceived++;
      this.arrivals.push(now);
      if (!msg.timeline) {
        this.fail("bad_field", "The server sent a session frame without its timeline (protocol version 2 "
          + "servers set FLAG_TIMELINE); this page cannot tell when to show it.");
        return;
      }
      if (msg.sessionFrame > this.lastSessionFrame + 1) this.gaps += msg.sessionFrame - this.lastSessionFrame - 1;
      this.lastSessionFrame = Math.max(this.lastSessionFrame, msg.sessionFrame);
      stats.framesDropped = Math.max(this.gaps, stats.sessionEnd ? stats.sessionEnd.framesDropped : 0);
      this.payloadBytes += msg.payload.length;
      const arrival = audibleTime(this.ctx, now);
      const audioTime = (this.t0 === null ? arrival : this.t0) + msg.audioOffset / SAMPLE_RATE;
      this.lags.push((arrival - audioTime) * 1000);
      const frame = {
        sessionFrame: msg.sessionFrame, frameIndex: msg.frameIndex, playTime: audioTime + this.delay,
        late: arrival > audioTime + this.delay, ready: false, dropped: false, image: null, base: null,
        crop: null, rect: msg.rect,
      };
      if (frame.late) stats.framesLate++;
      let at = this.queue.length;
      while (at > 0 && this.queue[at - 1].sessionFrame > frame.sessionFrame) at--;
      this.queue.splice(at, 0, frame);
      this.supersede(this.due(arrival) - 1); // while drawing stalls (a hidden tab), keep no backlog
      this.prepare(frame, msg).then(() => {
        frame.ready = true;
        if (frame.dropped) this.release(frame);
      }, (error) => {
        if (!this.finished) {
          this.fail(error.code || "bad_field", `Cannot decode frame ${msg.sessionFrame}: ${error.message}`);
        }
      });
    }

    /** Decode a frame's images before its play time (drawing must not wait). */
    async prepare(frame, msg) {
      if (msg.image === IMAGE.JPEG || msg.image === IMAGE.PNG) {
        const type = msg.image === IMAGE.JPEG ? "image/jpeg" : "image/png";
        frame.image = await createImageBitmap(new Blob([msg.payload], { type }));
        return;
      }
      if ((msg.image !== IMAGE.CROP_ONLY && msg.image !== IMAGE.CROP_JPEG) || !this.avatar) {
        throw new ProtocolError("bad_field", `image format ${msg.image} was not asked for`);
      }
      const base = this.avatar.get(msg.frameIndex, (i) => this.queue.some((f) => f.frameIndex === i));
      if (msg.payload.length && msg.image === IMAGE.CROP_JPEG) {
        frame.crop = await createImageBitmap(new Blob([msg.payload], { type: "image/jpeg" }));
      } else if (msg.payload.length) {
        const pixels = new ImageData(msg.width, msg.height);
        const rgba = pixels.data;
        const bgr = msg.payload;
        for (let i = 0, j = 0; i < bgr.length; i += 3, j += 4) {
          rgba[j] = bgr[i + 2];
          rgba[j + 1] = bgr[i + 1];
          rgba[j + 2] = bgr[i];
          rgba[j + 3] = 255;
        }
        frame.crop = await createImageBitmap(pixels);
      }
      frame.base = await base;
    }

    release(frame) {
      if (frame.image) frame.image.close();
      if (frame.crop) frame.crop.close();
      frame.image = frame.crop = frame.base = null;
    }

    tick(perfNow) {
      if (this.finished) return;
      const now = audibleTime(this.ctx, performance.now());
      const pick = this.due(now);
      if (pick >= 0) {
        this.supersede(pick - 1);
        this.show(this.queue.shift(), now);
      }
      if (perfNow - this.lastStats > STATS_EVERY_MS) this.updateStats(perfNow);
      if ((this.serverEnded || this.closed) && this.queue.length === 0) {
        this.finish();
        return;
      }
      requestAnimationFrame((t) => this.tick(t));
    }

    /** Index of the newest decoded frame whose play time has come (-1: none). */
    due(now) {
      let pick = -1;
      for (let i = 0; i < this.queue.length && this.queue[i].playTime <= now; i++) {
        if (this.queue[i].ready) pick = i;
      }
      return pick;
    }

    /** Drop queue[0..last]: a newer frame's time has come before they were shown. */
    supersede(last) {
      for (const older of this.queue.splice(0, last + 1)) {
        older.dropped = true;
        this.stats.framesSuperseded++;
        if (older.ready) this.release(older);
      }
    }

    show(frame, now) {
      const w = ui.canvas.width;
      const h = ui.canvas.height;
      if (frame.image) {
        draw2d.drawImage(frame.image, 0, 0, w, h);
      } else {
        draw2d.drawImage(frame.base, 0, 0, w, h);
        if (frame.crop) {
          const [x0, y0, x1, y1] = frame.rect;
          draw2d.imageSmoothingQuality = "high";
          draw2d.drawImage(frame.crop, x0, y0, x1 - x0, y1 - y0);
        }
      }
      const offset = (now - frame.playTime) * 1000;
      (frame.late ? this.lateOffsets : this.offsets).push(offset);
      this.stats.framesDrawn++;
      this.release(frame);
    }

    updateStats(perfNow) {
      const s = this.stats;
      this.lastStats = perfNow;
      while (this.arrivals.length && this.arrivals[0] < perfNow - 1000) this.arrivals.shift();
      s.fps = this.arrivals.length;
      s.lagMsMedian = median(this.lags);
      s.lagMsMax = this.lags.length ? Math.max(...this.lags) : null;
      s.avOffsetMsMedian = median(this.offsets);
      s.avOffsetMsMaxAbs = this.offsets.length ? Math.max(...this.offsets.map(Math.abs)) : null;
      s.lateOffsetMsMax = this.lateOffsets.length ? Math.max(...this.lateOffsets) : null;
      s.bytesPerFrame = s.framesReceived ? this.payloadBytes / s.framesReceived : null;
      if (s.sessionEnd) s.framesDropped = Math.max(this.gaps, s.sessionEnd.framesDropped);
      if (s.bytesPerFrame !== null) {
        bytesByMode[this.mode] = { perFrame: s.bytesPerFrame, download: s.framesDownloadBytes };
      }
      render(s);
    }

    fail(code, message) {
      this.stats.errors.push({ code, message });
      showError(code, message);
      this.finish(); // every error_reply ends a session for this page (the server closes on most)
    }

    onClose(event) {
      this.closed = true;
      this.capturing = false;
      if (!this.serverEnded && !this.finished && !this.stats.errors.length) {
        const why = event.reason ? `: ${event.reason}` : "";
        this.stats.errors.push({ code: "closed", message: `connection closed (${event.code}${why})` });
        showError("closed", `The connection closed before the session ended (code ${event.code}${why}).`);
      }
      if (!this.delay) this.finish(); // never started: nothing left to draw
    }

    finish() {
      if (this.finished) return;
      this.finished = true;
      this.capturing = false;
      for (const frame of this.queue) this.release(frame);
      this.queue = [];
      for (const node of this.nodes) node.disconnect();
      if (this.capture) this.capture.close();
      if (this.source === "file" && this.input && this.delay) {
        try { this.input.stop(); } catch (error) { /* already ended */ }
      }
      if (this.stream) for (const track of this.stream.getTracks()) track.stop();
      if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "done");
      this.updateStats(performance.now());
      this.stats.ended = true;
      const s = this.stats;
      if (!s.errors.length) {
        setState(`Ended: ${s.framesDrawn} of ${s.framesReceived} frames drawn, ${s.framesDropped} dropped, `
          + `${s.framesLate} late.`);
      } else {
        setState("Stopped.");
      }
      if (current === this) current = null;
      setRunning(false);
    }
  }

  function render(s) {
    const text = (id, value) => { $(id).textContent = value; };
    text("s-mode", s.mode === "crop" ? "crop only" : s.mode === "jpeg" ? "full frames (JPEG)" : "-");
    text("s-frames", `${s.framesReceived} / ${s.framesDrawn}`);
    text("s-fps", String(s.fps));
    text("s-lag", `${ms(s.lagMsMedian)} / ${ms(s.lagMsMax)}`);
    text("s-delay", s.playoutDelayMs === null ? "-" : `${s.playoutDelayMs} ms (server bound ${s.maxLagMs || "none"}`
      + ` + ${PLAYOUT_MARGIN_MS} ms margin)`);
    text("s-offset", `${ms(s.avOffsetMsMedian)} / ${ms(s.avOffsetMsMaxAbs)}`);
    text("s-dropped", `${s.framesDropped} dropped, ${s.framesLate} late, ${s.framesSuperseded} not shown`);
    const jpeg = bytesByMode.jpeg;
    const crop = bytesByMode.crop;
    text("b-jpeg", jpeg ? `${kb(jpeg.perFrame)} per frame` : "-");
    text("b-crop", crop ? `${kb(crop.perFrame)} per frame + ${kb(crop.download)} once (the avatar's frames)` : "-");
  }

  function setRunning(running) {
    for (const element of ui.form.elements) {
      if (element !== ui.stop) element.disabled = running;
    }
    ui.stop.disabled = !running;
    if (!running) syncSource();
  }

  function syncSource() {
    const source = ui.form.elements.source.value;
    ui.file.disabled = source !== "file";
    ui.mute.disabled = source !== "mic";
  }

  ui.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (current) return;
    clearErrors();
    const quality = Number(ui.quality.value);
    current = new Run({
      packageId: ui.avatar.value, mode: ui.form.elements.mode.value, source: ui.form.elements.source.value,
      file: ui.file.files[0], quality: Number.isInteger(quality) && quality >= 1 && quality <= 100 ? quality : 85,
    });
    setRunning(true);
    ui.stop.disabled = true; // until the session runs
    try {
      if (!current.packageId) throw new ProtocolError("unknown_package", "Pick an avatar first.");
      await current.start();
    } catch (error) {
      if (current) current.fail(error.code || error.name || "internal", error.message);
    }
  });

  ui.stop.addEventListener("click", () => {
    if (current) current.finishAudio();
    ui.stop.disabled = true;
  });
  ui.mute.addEventListener("change", () => {
    if (current && current.gain && current.source === "mic") current.gain.gain.value = ui.mute.checked ? 0 : 1;
  });
  for (const radio of ui.form.elements.source) radio.addEventListener("change", syncSource);
  ui.refresh.addEventListener("click", () => { clearErrors(); loadPackages(); });
  ui.token.addEventListener("change", () => { clearErrors(); loadPackages(); });

  ui.token.value = new URLSearchParams(location.search).get("token") || "";
  syncSource();
  loadPackages();
})();
