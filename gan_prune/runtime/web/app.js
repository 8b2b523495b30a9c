// The page: latents from seeds (seed.js), the exported generator in ONNX Runtime Web (WebGPU when the browser has
// it, else WebAssembly), one image per seed drawn into a grid, and the measured milliseconds per image.
// window.ganPrune holds the state a test reads: backend, msPerImage, firstPixels (HWC uint8 of the first image).
(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const state = { session: null, facts: null, backend: null, rendering: false };
  window.ganPrune = { ready: false, done: 0, error: null };

  function toPixels(data, channels, size) {
    // img * 127.5 + 128, clamped to [0, 255] and truncated: the conversion gan-prune generate uses.
    const pixels = new Uint8ClampedArray(size * size * 4);
    const hwc = new Uint8Array(size * size * channels);
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const p = y * size + x;
        for (let ch = 0; ch < 3; ch++) {
          const src = channels === 1 ? 0 : ch;
          const value = Math.min(255, Math.max(0, Math.trunc(data[src * size * size + p] * 127.5 + 128)));
          pixels[p * 4 + ch] = value;
          if (ch < channels) hwc[p * channels + ch] = value;
        }
        pixels[p * 4 + 3] = 255;
      }
    }
    return { rgba: pixels, hwc: hwc };
  }

  async function createSession(model) {
    ort.env.wasm.wasmPaths = new URL('ort/', document.baseURI).href;
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    const wanted = new URLSearchParams(location.search).get('backend');
    const candidates = wanted ? [wanted] : (navigator.gpu ? ['webgpu', 'wasm'] : ['wasm']);
    let lastError = null;
    for (const backend of candidates) {
      try {
        const session = await ort.InferenceSession.create(model, { executionProviders: [backend] });
        return { session: session, backend: backend };
      } catch (e) {
        lastError = e;
      }
    }
    throw lastError;
  }

  function feeds(seed, psi, classIndex) {
    const f = state.facts;
    const z = Float32Array.from(GanPruneSeed.randn(seed, f.z_dim));
    const inputs = { z: new ort.Tensor('float32', z, [1, f.z_dim]) };
    if (f.c_dim > 0) {
      const c = new Float32Array(f.c_dim);
      c[Math.min(Math.max(classIndex, 0), f.c_dim - 1)] = 1;
      inputs.c = new ort.Tensor('float32', c, [1, f.c_dim]);
    }
    if (f.psi_input) inputs.psi = new ort.Tensor('float32', Float32Array.of(psi), [1]);
    return inputs;
  }

  function median(values) {
    const s = values.slice().sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }

  async function render(event) {
    if (event) event.preventDefault();
    if (state.rendering || !state.session) return;
    state.rendering = true;
    const f = state.facts;
    const seed = Math.trunc(Number($('seed').value));
    const count = Math.min(64, Math.max(1, Math.trunc(Number($('count').value))));
    const psi = Number($('psi').value);
    const classIndex = Math.trunc(Number($('class').value));
    const grid = $('grid');
    grid.replaceChildren();
    const times = [];
    try {
      for (let i = 0; i < count; i++) {
        const t0 = performance.now();
        const out = await state.session.run(feeds(seed + i, psi, classIndex));
        const data = await out.img.getData();
        times.push(performance.now() - t0);
        const size = f.img_resolution;
        const pixels = toPixels(data, f.img_channels, size);
        const canvas = document.createElement('canvas');
        canvas.width = canvas.height = size;
        canvas.title = 'seed ' + (seed + i);
        canvas.getContext('2d').putImageData(new ImageData(pixels.rgba, size, size), 0, 0);
        grid.appendChild(canvas);
        if (i === 0) window.ganPrune.firstPixels = Array.from(pixels.hwc);
        $('status').textContent = `${state.backend}: image ${i + 1} of ${count}, ${times[i].toFixed(1)} ms`;
      }
      // The first run includes one-time set-up (kernel compilation on WebGPU); leave it out when there are more.
      const steady = times.length > 1 ? times.slice(1) : times;
      const ms = median(steady);
      window.ganPrune.msPerImage = ms;
      window.ganPrune.times = times;
      $('status').textContent = `${state.backend}: ${ms.toFixed(1)} ms per image (median of ${steady.length}; ` +
        `first image ${times[0].toFixed(1)} ms), seeds ${seed}-${seed + count - 1}, truncation ${psi.toFixed(2)}`;
    } catch (e) {
      window.ganPrune.error = String(e);
      $('status').textContent = 'error: ' + e;
      $('status').className = 'error';
    } finally {
      state.rendering = false;
      window.ganPrune.done += 1;
    }
  }

  async function main() {
    try {
      const params = new URLSearchParams(location.search);
      state.facts = await (await fetch('model.json')).json();
      const f = state.facts;
      if (params.has('seed')) $('seed').value = params.get('seed');
      if (params.has('count')) $('count').value = params.get('count');
      $('psi').value = params.has('psi') ? params.get('psi') : (f.truncation_default ?? 0.7);
      $('psi-value').textContent = Number($('psi').value).toFixed(2);
      $('psi').disabled = !f.psi_input;
      if (f.c_dim > 0) {
        $('class-box').hidden = false;
        $('class').max = f.c_dim - 1;
      }
      document.documentElement.style.setProperty('--cell', Math.max(64, Math.min(256, f.img_resolution)) + 'px');
      $('about').textContent = `${f.generator_class}, ${f.img_resolution}x${f.img_resolution}, z_dim ${f.z_dim}` +
        (f.c_dim ? `, ${f.c_dim} classes` : '') + ` (${(f.model_bytes / 2 ** 20).toFixed(1)} MiB model)`;
      const created = await createSession('model.onnx');
      state.session = created.session;
      state.backend = created.backend;
      window.ganPrune.backend = created.backend;
      window.ganPrune.ready = true;
      $('psi').addEventListener('input', () => { $('psi-value').textContent = Number($('psi').value).toFixed(2); });
      $('psi').addEventListener('change', render);
      $('controls').addEventListener('submit', render);
      await render();
    } catch (e) {
      window.ganPrune.error = String(e);
      $('status').textContent = 'error: ' + e;
      $('status').className = 'error';
    }
  }

  main();
})();
