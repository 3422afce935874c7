// Audio capture for the lipsync demo (an AudioWorklet module; see demo.js).
//
// Takes the mono input (its own output stays silent) and posts it to the page in blocks of BLOCK samples,
// each with the AudioContext time of its first sample, so the page knows when every sample it sends plays.
// A render quantum without input (a source not yet started or already ended) counts as silence: the
// session's audio timeline never has a hole.
"use strict";

const BLOCK = 512; // 32 ms at 16 kHz: four render quanta per audio_chunk

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buffer = new Float32Array(BLOCK);
    this.filled = 0;
    this.blockTime = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post();
        this.running = false;
        this.port.postMessage({ done: true });
      }
    };
  }

  post() {
    if (this.filled === 0) return;
    const samples = this.buffer.slice(0, this.filled);
    this.port.postMessage({ time: this.blockTime, samples }, [samples.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const channel = inputs[0] && inputs[0][0];
    const n = channel ? channel.length : 128;
    for (let i = 0; i < n; i++) {
      if (this.filled === 0) this.blockTime = currentTime + i / sampleRate;
      this.buffer[this.filled++] = channel ? channel[i] : 0;
      if (this.filled === BLOCK) this.post();
    }
    return true;
  }
}

registerProcessor("lipsync-capture", CaptureProcessor);
