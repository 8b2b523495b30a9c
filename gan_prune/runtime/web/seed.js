// Latents from a seed, equal to numpy's np.random.RandomState(seed).randn(n):
// MT19937 seeded with init_genrand (numpy's legacy integer seeding), 53-bit doubles from two 32-bit draws,
// and the legacy polar (Marsaglia) Gaussian that returns the second value of each pair first and caches one.
(function (root) {
  'use strict';
  const N = 624;
  const M = 397;

  function MT19937(seed) {
    this.mt = new Uint32Array(N);
    this.mt[0] = seed >>> 0;
    for (let i = 1; i < N; i++) {
      const prev = this.mt[i - 1] ^ (this.mt[i - 1] >>> 30);
      this.mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.index = N;
    this.cachedGauss = null;
  }

  MT19937.prototype.twist = function () {
    const mt = this.mt;
    for (let i = 0; i < N; i++) {
      const y = (mt[i] & 0x80000000) | (mt[(i + 1) % N] & 0x7fffffff);
      let next = mt[(i + M) % N] ^ (y >>> 1);
      if (y & 1) next ^= 0x9908b0df;
      mt[i] = next >>> 0;
    }
    this.index = 0;
  };

  MT19937.prototype.uint32 = function () {
    if (this.index >= N) this.twist();
    let y = this.mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  };

  // A double in [0, 1) from 27 + 26 random bits, as numpy's legacy random_sample.
  MT19937.prototype.double = function () {
    const a = this.uint32() >>> 5;
    const b = this.uint32() >>> 6;
    return (a * 67108864.0 + b) / 9007199254740992.0;
  };

  MT19937.prototype.gauss = function () {
    if (this.cachedGauss !== null) {
      const g = this.cachedGauss;
      this.cachedGauss = null;
      return g;
    }
    let x1, x2, r2;
    do {
      x1 = 2.0 * this.double() - 1.0;
      x2 = 2.0 * this.double() - 1.0;
      r2 = x1 * x1 + x2 * x2;
    } while (r2 >= 1.0 || r2 === 0.0);
    const f = Math.sqrt(-2.0 * Math.log(r2) / r2);
    this.cachedGauss = f * x1;
    return f * x2;
  };

  // numpy.random.RandomState(seed).randn(n) as a Float64Array.
  function randn(seed, n) {
    if (!Number.isInteger(seed) || seed < 0 || seed > 4294967295) {
      throw new RangeError('seed must be an integer between 0 and 2**32 - 1');
    }
    const rng = new MT19937(seed);
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = rng.gauss();
    return out;
  }

  const api = { MT19937: MT19937, randn: randn };
  if (typeof module !== 'undefined' && module.exports) module.exports = api;
  else root.GanPruneSeed = api;
})(typeof self !== 'undefined' ? self : this);
