// CPU float32 inference kernels for narrow synthesis layers (few channels, large images).
//
// oneDNN vectorises convolutions over channels, so with 4-60 channels most vector lanes idle and every
// epilogue (bias, noise, leaky ReLU, clamp) is a further pass over memory. These kernels vectorise over
// image columns instead (planar NCHW), keep a tile of output channels in registers, and apply the
// epilogue before the first store:
//   conv3x3_lrelu: y = act(conv3x3(x, w[n]) + bias + noise), stride 1, zero padding 1, per-sample weights;
//   up3x3_fir_lrelu: y = act(fir(conv_transpose(x, w[n], stride 2), f) + bias + noise), the upsampling layer:
//                  transposed 3x3 convolution, then the 4x4 low-pass filter (zero padding 1), in one pass;
// act(v) = clamp(lrelu(v, alpha), -clamp, clamp) (no clamp when clamp is not finite).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>
#include <cstdint>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int VW = 16;        // floats per vector
constexpr int MAX_TILE = 16;  // output channels kept in registers (32 vector registers)
#else
constexpr int VW = 8;
constexpr int MAX_TILE = 12;  // 16 vector registers: 12 accumulators and the 3 input vectors
#endif
typedef float vec __attribute__((vector_size(VW * sizeof(float))));

inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
inline vec splat(float s) { return vec{} + s; }

// Lane shifts that bring in a zero: the neighbours of the first/last column of a row (zero padding)
// without reading outside the row.
#if defined(__AVX512F__)
inline vec shift_right(vec v) {  // {0, v0, ..., v14}
    return __builtin_shufflevector(vec{}, v, 0, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30);
}
inline vec shift_left(vec v) {  // {v1, ..., v15, 0}
    return __builtin_shufflevector(v, vec{}, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
}
#else
inline vec shift_right(vec v) { return __builtin_shufflevector(vec{}, v, 0, 8, 9, 10, 11, 12, 13, 14); }
inline vec shift_left(vec v) { return __builtin_shufflevector(v, vec{}, 1, 2, 3, 4, 5, 6, 7, 8); }
#endif

// Columns [x0 - lo, x0 + VW + hi) of a row of width W into buf, zero outside the row.
inline void gather_row(const float* row, int W, int x0, int lo, int hi, float* buf) {
    for (int i = -lo; i < VW + hi; ++i) {
        const int x = x0 + i;
        buf[i + lo] = (x >= 0 && x < W) ? row[x] : 0.0f;
    }
}

struct Epilogue {
    const float* bias;   // [C]
    const float* noise;  // [H, W] plane for this sample, or nullptr
    float alpha, clamp;
    bool use_clamp;

    inline vec apply(vec v, float b, const vec& nz) const {
        v = v + b + nz;
        v = v > 0 ? v : v * alpha;
        if (use_clamp) {
            const vec hi = splat(clamp), lo = splat(-clamp);
            v = v > hi ? hi : v;
            v = v < lo ? lo : v;
        }
        return v;
    }
    inline vec noise_at(int y, int W, int x0) const {
        if (noise == nullptr) return vec{};
        if (x0 + VW <= W) return load(noise + (size_t)y * W + x0);
        float buf[VW];
        gather_row(noise + (size_t)y * W, W, x0, 0, 0, buf);
        return load(buf);
    }
};

inline void store_cols(float* dst, int W, int x0, vec v) {
    if (x0 + VW <= W) {
        store(dst + x0, v);
    } else {
        float buf[VW];
        store(buf, v);
        for (int i = 0; x0 + i < W; ++i) dst[x0 + i] = buf[i];
    }
}

// Calls f(std::integral_constant<int, t>{}) for a runtime tile size 1 <= t <= T, so that every tile size gets
// its own compiled loop with the accumulators in registers.
template <int T, typename F>
void with_tile_size(int t, F&& f) {
    if constexpr (T >= 1) {
        if (t == T) return f(std::integral_constant<int, T>{});
        return with_tile_size<T - 1>(t, std::forward<F>(f));
    }
}

// One output row y of the T output channels [oc0, oc0 + T) of one sample.
// x: [IC, H, W]; wt: [IC, 3, 3, T] (the tile's weights, see pack_tile); out: [OC, H, W].
template <int T>
void conv3x3_row(const float* x, int IC, int H, int W, const float* wt, int oc0, int y, const Epilogue& ep,
                 float* out) {
    for (int x0 = 0; x0 < W; x0 += VW) {
        vec acc[T];
        for (int o = 0; o < T; ++o) acc[o] = vec{};
        // Rows made of whole vectors need no gathering: the outermost neighbours are lane shifts.
        const bool whole = (W % VW) == 0;
        const bool edge = (x0 == 0) || (x0 + VW + 1 > W);
        for (int ic = 0; ic < IC; ++ic) {
            const float* plane = x + (size_t)ic * H * W;
            const float* wic = wt + (size_t)ic * 9 * T;
            for (int ky = 0; ky < 3; ++ky) {
                const int yy = y + ky - 1;
                if (yy < 0 || yy >= H) continue;
                const float* row = plane + (size_t)yy * W;
                vec v0, v1, v2;
                if (!edge) {
                    v0 = load(row + x0 - 1);
                    v1 = load(row + x0);
                    v2 = load(row + x0 + 1);
                } else if (whole) {
                    v1 = load(row + x0);
                    v0 = x0 == 0 ? shift_right(v1) : load(row + x0 - 1);
                    v2 = x0 + VW == W ? shift_left(v1) : load(row + x0 + 1);
                } else {
                    float buf[VW + 2];
                    gather_row(row, W, x0, 1, 1, buf);
                    v0 = load(buf);
                    v1 = load(buf + 1);
                    v2 = load(buf + 2);
                }
                // One tap at a time across the tile: T independent multiply-adds in flight.
                const float* wk = wic + ky * 3 * T;
                for (int o = 0; o < T; ++o) acc[o] += wk[o] * v0;
                for (int o = 0; o < T; ++o) acc[o] += wk[T + o] * v1;
                for (int o = 0; o < T; ++o) acc[o] += wk[2 * T + o] * v2;
            }
        }
        const vec nz = ep.noise_at(y, W, x0);
        for (int o = 0; o < T; ++o) {
            const int oc = oc0 + o;
            store_cols(out + ((size_t)oc * H + y) * W, W, x0, ep.apply(acc[o], ep.bias[oc], nz));
        }
    }
}

// ---- Upsampling layer: transposed 3x3 convolution (stride 2) followed by the 4x4 FIR, fused ----
//
// t = conv_transpose2d(x, w^T, stride 2) has 2H+1 rows and columns; the layer output is
// out[Y][X] = sum_{u,v} f[u][v] t[Y+u-1][X+v-1] (zero outside t), 2H x 2W. Row ty of t is computed once,
// split into even columns E[j] = t[ty][2j] (j = 0..W) and odd columns O[j] = t[ty][2j+1] (j = 0..W-1):
//   E[j] = sum_{ic, ky} x[ic][i][j] w[ic][ky][0] + x[ic][i][j-1] w[ic][ky][2],  O[j] = sum x[ic][i][j] w[ic][ky][1]
// over the ky with ty - ky = 2i even and 0 <= i < H. Four such rows sit in a ring buffer (rows Y-1..Y+2) while
// output row Y is filtered, so t never leaves the cache.
struct UpRing {
    // Per channel and ring slot: E at [0, W + VW) and O shifted by one ([1, W]) with zeros around, so that
    // the filter's neighbours O[j-1] and O[j+1] and E[j+1] are plain loads.
    int stride;
    std::vector<float> data;
    UpRing(int T, int W) : stride(W + 2 * VW), data((size_t)T * 4 * 2 * stride, 0.0f) {}
    float* even(int o, int slot) { return data.data() + (((size_t)o * 4 + slot) * 2 + 0) * stride; }
    float* odd(int o, int slot) { return data.data() + (((size_t)o * 4 + slot) * 2 + 1) * stride + 1; }
};

// Row ty of t for the T output channels of a tile into ring slot `slot`. x: [IC, H, W]; wt: [IC, 3, 3, T]
// (the tile's weights, packed so that every weight address is a constant offset from one pointer).
template <int T>
void up_t_row(const float* x, int IC, int H, int W, const float* wt, int ty, UpRing& ring, int slot) {
    int kys[2], nky = 0;
    for (int ky = 0; ky < 3; ++ky) {
        const int d = ty - ky;
        if (d >= 0 && d % 2 == 0 && d / 2 < H) kys[nky++] = ky;
    }
    for (int j0 = 0; j0 < W; j0 += VW) {
        vec acc[T];
        // Even columns: taps kx = 0 (column j) and kx = 2 (column j - 1).
        for (int o = 0; o < T; ++o) acc[o] = vec{};
        for (int ic = 0; ic < IC; ++ic) {
            for (int k = 0; k < nky; ++k) {
                const float* row = x + ((size_t)ic * H + (ty - kys[k]) / 2) * W;
                const vec cur = load(row + j0);
                const vec prev = j0 == 0 ? shift_right(cur) : load(row + j0 - 1);
                const float* wk = wt + ((size_t)ic * 9 + kys[k] * 3) * T;
                for (int o = 0; o < T; ++o) acc[o] += wk[o] * cur;
                for (int o = 0; o < T; ++o) acc[o] += wk[2 * T + o] * prev;
            }
        }
        for (int o = 0; o < T; ++o) store(ring.even(o, slot) + j0, acc[o]);
        // Odd columns: tap kx = 1 (column j).
        for (int o = 0; o < T; ++o) acc[o] = vec{};
        for (int ic = 0; ic < IC; ++ic) {
            for (int k = 0; k < nky; ++k) {
                const vec cur = load(x + ((size_t)ic * H + (ty - kys[k]) / 2) * W + j0);
                const float* wk = wt + ((size_t)ic * 9 + kys[k] * 3) * T;
                for (int o = 0; o < T; ++o) acc[o] += wk[T + o] * cur;
            }
        }
        for (int o = 0; o < T; ++o) store(ring.odd(o, slot) + j0, acc[o]);
    }
    // E[W] = t[ty][2W]: only the kx = 2 tap of the last input column reaches it.
    float e[T] = {};
    for (int ic = 0; ic < IC; ++ic) {
        for (int k = 0; k < nky; ++k) {
            const float v = x[((size_t)ic * H + (ty - kys[k]) / 2) * W + W - 1];
            const float* wk = wt + ((size_t)ic * 9 + kys[k] * 3 + 2) * T;
            for (int o = 0; o < T; ++o) e[o] += v * wk[o];
        }
    }
    for (int o = 0; o < T; ++o) ring.even(o, slot)[W] = e[o];
}

// The weights of output channels [oc0, oc0 + T) from wp [IC, 3, 3, OC] as [IC, 3, 3, T].
std::vector<float> pack_tile(const float* wp, int IC, int OC, int oc0, int T) {
    std::vector<float> wt((size_t)IC * 9 * T);
    for (int r = 0; r < IC * 9; ++r)
        for (int o = 0; o < T; ++o) wt[(size_t)r * T + o] = wp[(size_t)r * OC + oc0 + o];
    return wt;
}

// Interleave: zip_lo = {a0, b0, a1, b1, ...} (first half of the lanes), zip_hi the second half.
#if defined(__AVX512F__)
inline vec zip_lo(vec a, vec b) {
    return __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}
inline vec zip_hi(vec a, vec b) {
    return __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
}
#else
inline vec zip_lo(vec a, vec b) { return __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11); }
inline vec zip_hi(vec a, vec b) { return __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15); }
#endif

template <int T>
void up_tile(const float* x, int IC, int H, int W, const float* wp, int OC, int oc0, const float* taps,
             const Epilogue& ep, float* out) {
    const int Ht = 2 * H + 1, Ho = 2 * H, Wo = 2 * W;
    UpRing ring(T, W);
    const std::vector<float> wt = pack_tile(wp, IC, OC, oc0, T);
    int done = -1;  // last t row computed
    for (int Y = 0; Y < Ho; ++Y) {
        while (done < std::min(Y + 2, Ht - 1)) {
            ++done;
            up_t_row<T>(x, IC, H, W, wt.data(), done, ring, done & 3);
        }
        for (int o = 0; o < T; ++o) {
            float* dst = out + ((size_t)(oc0 + o) * Ho + Y) * Wo;
            for (int j0 = 0; j0 < W; j0 += VW) {
                vec even = vec{}, odd = vec{};
                for (int u = 0; u < 4; ++u) {
                    const int ty = Y + u - 1;
                    if (ty < 0 || ty >= Ht) continue;
                    const float* E = ring.even(o, ty & 3) + j0;
                    const float* O = ring.odd(o, ty & 3) + j0;
                    const vec e0 = load(E), e1 = load(E + 1), o0 = load(O), om = load(O - 1), o1 = load(O + 1);
                    const float* f = taps + u * 4;
                    even += f[0] * om + f[1] * e0 + f[2] * o0 + f[3] * e1;  // t[2j-1], t[2j], t[2j+1], t[2j+2]
                    odd += f[0] * e0 + f[1] * o0 + f[2] * e1 + f[3] * o1;   // t[2j], ..., t[2j+3]
                }
                // O[W] (= t[2W+1]) lies outside t: the ring keeps it zero.
                const int X = 2 * j0;
                store(dst + X, ep.apply(zip_lo(even, odd), ep.bias[oc0 + o], ep.noise_at(Y, Wo, X)));
                store(dst + X + VW, ep.apply(zip_hi(even, odd), ep.bias[oc0 + o], ep.noise_at(Y, Wo, X + VW)));
            }
        }
    }
}

// Output channels split into tiles of at most MAX_TILE, as equal as possible.
struct Tiling {
    int count, base, extra;
    explicit Tiling(int channels) {
        count = (channels + MAX_TILE - 1) / MAX_TILE;
        base = channels / count;
        extra = channels % count;
    }
    int start(int i) const { return i * base + (i < extra ? i : extra); }
    int size(int i) const { return base + (i < extra ? 1 : 0); }
};

void check_float_cpu(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
                name, " must be a contiguous float32 CPU tensor");
}

Epilogue make_epilogue(const torch::Tensor& bias, double alpha, double clamp) {
    Epilogue ep;
    ep.bias = bias.data_ptr<float>();
    ep.noise = nullptr;
    ep.alpha = (float)alpha;
    ep.use_clamp = std::isfinite(clamp);
    ep.clamp = ep.use_clamp ? (float)clamp : 0.0f;
    return ep;
}

// noise: empty, [H, W] (shared) or [N, H, W] (per sample); returns the plane of sample n or nullptr.
const float* noise_plane(const torch::Tensor& noise, int64_t n, int64_t H, int64_t W) {
    if (noise.numel() == 0) return nullptr;
    return noise.data_ptr<float>() + (noise.dim() == 3 ? n * H * W : 0);
}

void check_noise(const torch::Tensor& noise, int64_t N, int64_t H, int64_t W) {
    if (noise.numel() == 0) return;
    check_float_cpu(noise, "noise");
    TORCH_CHECK((noise.dim() == 2 && noise.size(0) == H && noise.size(1) == W) ||
                (noise.dim() == 3 && noise.size(0) == N && noise.size(1) == H && noise.size(2) == W),
                "noise must be [H, W] or [N, H, W] matching the output");
}


// ---- Output buffers ----
//
// A fresh multi-megabyte allocation is fresh memory: the first write of every 4 KiB page faults into the
// kernel, which zeroes it. For narrow layers that costs as much as a third of the layer. Outputs therefore
// come from a small cache of buffers that earlier outputs released: a buffer is reused only after PyTorch
// has freed the tensor that owned it, so nothing is ever shared. At most 256 MiB (set_cache_limit) stay cached; beyond
// that the least recently released buffers are freed (a different network's sizes then make way).
class BufferCache {
  public:
    static BufferCache& instance() {
        static BufferCache* cache = new BufferCache();  // never destroyed: tensors may outlive static teardown
        return *cache;
    }
    void* take(size_t bytes) {
        {
            std::lock_guard<std::mutex> guard(mutex_);
            int best = -1;
            for (int i = 0; i < (int)entries_.size(); ++i)
                if (entries_[i].bytes == bytes && (best < 0 || entries_[i].stamp > entries_[best].stamp)) best = i;
            if (best >= 0) {
                void* ptr = entries_[best].ptr;
                entries_.erase(entries_.begin() + best);
                cached_ -= bytes;
                return ptr;
            }
        }
        void* ptr = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
        TORCH_CHECK(ptr != nullptr, "narrow_conv: out of memory allocating ", bytes, " bytes");
        return ptr;
    }
    void give(void* ptr, size_t bytes) {
        std::vector<void*> evicted;
        {
            std::lock_guard<std::mutex> guard(mutex_);
            if (bytes > limit_) {
                evicted.push_back(ptr);
            } else {
                entries_.push_back({bytes, ptr, ++clock_});
                cached_ += bytes;
                while (cached_ > limit_) {  // drop the least recently released
                    auto oldest = std::min_element(entries_.begin(), entries_.end(),
                                                   [](const Entry& a, const Entry& b) { return a.stamp < b.stamp; });
                    evicted.push_back(oldest->ptr);
                    cached_ -= oldest->bytes;
                    entries_.erase(oldest);
                }
            }
        }
        for (void* p : evicted) std::free(p);
    }
    void clear() {
        std::lock_guard<std::mutex> guard(mutex_);
        for (const Entry& e : entries_) std::free(e.ptr);
        entries_.clear();
        cached_ = 0;
    }
    size_t cached_bytes() {
        std::lock_guard<std::mutex> guard(mutex_);
        return cached_;
    }
    void set_limit(size_t bytes) {
        {
            std::lock_guard<std::mutex> guard(mutex_);
            limit_ = bytes;
        }
        clear();
    }

  private:
    struct Entry {
        size_t bytes;
        void* ptr;
        uint64_t stamp;
    };
    std::mutex mutex_;
    size_t limit_ = size_t(256) << 20;
    std::vector<Entry> entries_;  // a few dozen at most: linear scans are cheap
    size_t cached_ = 0;
    uint64_t clock_ = 0;
};

torch::Tensor cached_empty(at::IntArrayRef sizes, const torch::TensorOptions& options) {
    int64_t numel = 1;
    for (int64_t s : sizes) numel *= s;
    const size_t bytes = std::max<size_t>(1, (size_t)numel * sizeof(float));
    void* ptr = BufferCache::instance().take(bytes);
    return torch::from_blob(ptr, sizes, [bytes](void* p) { BufferCache::instance().give(p, bytes); }, options);
}

}  // namespace

// x: [N, IC, H, W]; wp: [N, IC, 3, 3, OC] (per-sample weights, output channel last); bias: [OC].
torch::Tensor conv3x3_lrelu(torch::Tensor x, torch::Tensor wp, torch::Tensor bias, torch::Tensor noise,
                            double alpha, double clamp) {
    check_float_cpu(x, "x");
    check_float_cpu(wp, "wp");
    check_float_cpu(bias, "bias");
    TORCH_CHECK(x.dim() == 4 && wp.dim() == 5 && wp.size(0) == x.size(0) && wp.size(1) == x.size(1) &&
                wp.size(2) == 3 && wp.size(3) == 3 && bias.numel() == wp.size(4), "shape mismatch");
    const int64_t N = x.size(0), IC = x.size(1), H = x.size(2), W = x.size(3), OC = wp.size(4);
    check_noise(noise, N, H, W);
    auto out = cached_empty({N, OC, H, W}, x.options());
    const Tiling tiles((int)OC);
    const float* xd = x.data_ptr<float>();
    const float* wd = wp.data_ptr<float>();
    float* od = out.data_ptr<float>();
    const Epilogue base = make_epilogue(bias, alpha, clamp);
    // Work items: (sample, block of rows). Every tile of a row is computed before the next row, so the
    // three input rows it reads stay in cache across tiles instead of being re-read once per tile.
    constexpr int64_t kRows = 16;
    const int64_t chunks = (H + kRows - 1) / kRows;
    at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
        std::vector<std::vector<float>> packed;
        int64_t packed_for = -1;
        for (int64_t i = begin; i < end; ++i) {
            const int64_t n = i / chunks;
            const int y0 = (int)((i % chunks) * kRows), y1 = (int)std::min<int64_t>(H, y0 + kRows);
            if (packed_for != n) {
                packed.clear();
                for (int t = 0; t < tiles.count; ++t)
                    packed.push_back(pack_tile(wd + n * IC * 9 * OC, (int)IC, (int)OC, tiles.start(t), tiles.size(t)));
                packed_for = n;
            }
            Epilogue ep = base;
            ep.noise = noise_plane(noise, n, H, W);
            for (int y = y0; y < y1; ++y)
                for (int t = 0; t < tiles.count; ++t)
                    with_tile_size<MAX_TILE>(tiles.size(t), [&](auto tile) {
                        conv3x3_row<decltype(tile)::value>(xd + n * IC * H * W, (int)IC, (int)H, (int)W,
                                                           packed[t].data(), tiles.start(t), y, ep,
                                                           od + n * OC * H * W);
                    });
        }
    });
    return out;
}

// x: [N, IC, H, W] with W a multiple of the vector width; wp: [N, IC, 3, 3, OC] (per-sample weights of the
// transposed convolution, see above); taps: [4, 4] FIR (gain included; symmetric). Output [N, OC, 2H, 2W].
torch::Tensor up3x3_fir_lrelu(torch::Tensor x, torch::Tensor wp, torch::Tensor taps, torch::Tensor bias,
                              torch::Tensor noise, double alpha, double clamp) {
    check_float_cpu(x, "x");
    check_float_cpu(wp, "wp");
    check_float_cpu(taps, "taps");
    check_float_cpu(bias, "bias");
    TORCH_CHECK(x.dim() == 4 && wp.dim() == 5 && wp.size(0) == x.size(0) && wp.size(1) == x.size(1) &&
                wp.size(2) == 3 && wp.size(3) == 3 && bias.numel() == wp.size(4) && taps.numel() == 16,
                "shape mismatch");
    const int64_t N = x.size(0), IC = x.size(1), H = x.size(2), W = x.size(3), OC = wp.size(4);
    TORCH_CHECK(W % VW == 0, "the input width must be a multiple of ", VW);
    check_noise(noise, N, 2 * H, 2 * W);
    auto out = cached_empty({N, OC, 2 * H, 2 * W}, x.options());
    const Tiling tiles((int)OC);
    const float* xd = x.data_ptr<float>();
    const float* wd = wp.data_ptr<float>();
    const float* fd = taps.data_ptr<float>();
    float* od = out.data_ptr<float>();
    const Epilogue base = make_epilogue(bias, alpha, clamp);
    at::parallel_for(0, N * tiles.count, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t n = i / tiles.count;
            const int t = (int)(i % tiles.count);
            Epilogue ep = base;
            ep.noise = noise_plane(noise, n, 2 * H, 2 * W);
            with_tile_size<MAX_TILE>(tiles.size(t), [&](auto tile) {
                up_tile<decltype(tile)::value>(xd + n * IC * H * W, (int)IC, (int)H, (int)W, wd + n * IC * 9 * OC,
                                               (int)OC, tiles.start(t), fd, ep, od + n * OC * 4 * H * W);
            });
        }
    });
    return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("conv3x3_lrelu", &conv3x3_lrelu, "3x3 convolution with per-sample weights and fused epilogue");
    m.def("up3x3_fir_lrelu", &up3x3_fir_lrelu, "upsampling 3x3 layer: transposed convolution, FIR and epilogue");
    m.def("vector_width", []() { return VW; }, "floats per vector in this build");
    m.def("cached_bytes", []() { return (int64_t)BufferCache::instance().cached_bytes(); },
          "bytes of released output buffers kept for reuse");
    m.def("clear_cache", []() { BufferCache::instance().clear(); }, "free the cached output buffers");
    m.def("set_cache_limit", [](int64_t bytes) { BufferCache::instance().set_limit((size_t)bytes); },
          "most bytes of released output buffers to keep (empties the cache)");
}
