// CPU float32 inference kernels for synthesis networks, above all narrow (pruned) ones.
//
// oneDNN vectorises convolutions over channels, so with few channels many vector lanes idle and every
// epilogue (bias, noise, leaky ReLU, clamp) is a further pass over memory. These kernels vectorise over
// image columns instead (planar NCHW), keep a tile of output channels in registers, and apply the
// epilogue before the first store:
//   conv3x3_lrelu: y = act(conv3x3(x, w[n]) + b + noise), stride 1, zero padding 1;
//   up3x3_fir_lrelu: y = act(fir(conv_transpose(x, w[n], stride 2), f) + b + noise), the upsampling layer:
//                  transposed 3x3 convolution, then the 4x4 low-pass filter (zero padding 1), in one pass;
//   conv3x3_lrelu_rgb, rgb_skip: a block's output image, toRGB plus the upsampled skip image (see RgbOutput);
//   small_batch_linear: fully connected layers with a few rows (mapping network, affines).
// The per-sample weights are formed here from the layer's shared weight and the styles (modulation,
// demodulation, activation gain): w[n][o][i] = weight[o][i] * styles[n][i] * gain / |weight[o] * styles[n]|;
// b = gain * bias, noise = gain * strength * noise plane; act(v) = clamp(lrelu(v, alpha), -clamp, clamp)
// (no clamp when clamp is not finite).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int VW = 16;           // floats per full vector
constexpr int MAX_TILE = 16;     // output channels kept in registers (32 vector registers)
constexpr int MAX_UP_TILE = 10;  // upsampling layers with small inputs: two accumulators per channel
#else
constexpr int VW = 8;
constexpr int MAX_TILE = 12;  // 16 vector registers: 12 accumulators and the 3 input vectors
constexpr int MAX_UP_TILE = 6;
#endif

// A float vector whose elements start uninitialised unless a value is given: for buffers that are written in
// full right away (packed weights, scaled inputs), where std::vector's zero fill would be an extra pass.
template <typename T>
struct DefaultInit : std::allocator<T> {
    template <typename U>
    struct rebind { using other = DefaultInit<U>; };
    DefaultInit() = default;
    template <typename U>
    DefaultInit(const DefaultInit<U>&) noexcept {}
    template <typename U>
    void construct(U* p) noexcept { ::new ((void*)p) U; }
    template <typename U, typename... A>
    void construct(U* p, A&&... a) { ::new ((void*)p) U(std::forward<A>(a)...); }
};
using Floats = std::vector<float, DefaultInit<float>>;

// Vectors of L floats and the lane shuffles the kernels use. Rows narrower than a full vector (the 4-16 px
// layers) run with 4 or 8 lanes; on CPUs that split 512-bit operations in two (AMD Zen 4) 8 lanes cost no
// throughput at all.
template <int L> struct Lanes;
template <> struct Lanes<4> {
    typedef float vec __attribute__((vector_size(4 * sizeof(float))));
    static vec shift_right(vec v) { return __builtin_shufflevector(vec{}, v, 0, 4, 5, 6); }  // {0, v0, v1, v2}
    static vec shift_left(vec v) { return __builtin_shufflevector(v, vec{}, 1, 2, 3, 4); }   // {v1, v2, v3, 0}
    static vec zip_lo(vec a, vec b) { return __builtin_shufflevector(a, b, 0, 4, 1, 5); }    // {a0, b0, a1, b1}
    static vec zip_hi(vec a, vec b) { return __builtin_shufflevector(a, b, 2, 6, 3, 7); }
};
template <> struct Lanes<8> {
    typedef float vec __attribute__((vector_size(8 * sizeof(float))));
    static vec shift_right(vec v) { return __builtin_shufflevector(vec{}, v, 0, 8, 9, 10, 11, 12, 13, 14); }
    static vec shift_left(vec v) { return __builtin_shufflevector(v, vec{}, 1, 2, 3, 4, 5, 6, 7, 8); }
    static vec zip_lo(vec a, vec b) { return __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11); }
    static vec zip_hi(vec a, vec b) { return __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15); }
};
template <> struct Lanes<16> {
    typedef float vec __attribute__((vector_size(16 * sizeof(float))));
    static vec shift_right(vec v) {
        return __builtin_shufflevector(vec{}, v, 0, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30);
    }
    static vec shift_left(vec v) {
        return __builtin_shufflevector(v, vec{}, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
    }
    static vec zip_lo(vec a, vec b) {
        return __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    }
    static vec zip_hi(vec a, vec b) {
        return __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    }
};
template <int L> using vec_t = typename Lanes<L>::vec;

// Of a row held in consecutive vectors a, b: the vector one column to the right of a ({a1, ..., b0}), and
// the one one column to the left of b ({a[L-1], b0, ...}). One lane shuffle each.
template <typename V, int... I>
inline V shifted_right(V a, V b, std::integer_sequence<int, I...>) {
    return __builtin_shufflevector(a, b, (I + 1)...);
}
template <typename V, int... I>
inline V shifted_left(V a, V b, std::integer_sequence<int, I...>) {
    return __builtin_shufflevector(a, b, (I + (int)sizeof...(I) - 1)...);
}
template <int L> inline vec_t<L> right_of(vec_t<L> a, vec_t<L> b) {
    return shifted_right(a, b, std::make_integer_sequence<int, L>{});
}
template <int L> inline vec_t<L> left_of(vec_t<L> a, vec_t<L> b) {
    return shifted_left(a, b, std::make_integer_sequence<int, L>{});
}
using vec = vec_t<VW>;

template <int L> inline vec_t<L> load(const float* p) { vec_t<L> v; std::memcpy(&v, p, sizeof(v)); return v; }
template <typename V> inline void store(float* p, V v) { std::memcpy(p, &v, sizeof(v)); }
template <int L> inline vec_t<L> splat(float s) { return vec_t<L>{} + s; }

// Columns [x0 - lo, x0 + L + hi) of a row of width W into buf, zero outside the row.
template <int L>
inline void gather_row(const float* row, int W, int x0, int lo, int hi, float* buf) {
    for (int i = -lo; i < L + hi; ++i) {
        const int x = x0 + i;
        buf[i + lo] = (x >= 0 && x < W) ? row[x] : 0.0f;
    }
}

template <int L>
inline void store_cols(float* dst, int W, int x0, vec_t<L> v) {
    if (x0 + L <= W) {
        store(dst + x0, v);
    } else {
        float buf[L];
        store(buf, v);
        for (int i = 0; x0 + i < W; ++i) dst[x0 + i] = buf[i];
    }
}

// What a layer applies to its convolution output (see the top of the file); TileEpilogue applies it.
struct Epilogue {
    const float* bias;   // [C], the layer's (gain applied here)
    const float* scale;  // [C] factors of the convolution output for this sample, or nullptr (see Modulation)
    const float* noise;  // [H, W] plane for this sample, or nullptr
    float gain, noise_gain, alpha, clamp;
    bool use_clamp, unit_slope;  // unit_slope: 0 <= alpha <= 1, so lrelu(v) = max(v, alpha * v)
};

// The epilogue of the T output channels [oc0, oc0 + T), its constants copied out of the Epilogue before a loop:
// the loops store floats, which the compiler must assume may overwrite the Epilogue's float fields, so read
// through it every constant would be reloaded and re-derived for every vector (measured: 4-8 % of the
// 13-26 channel layers).
template <int T, int L>
struct TileEpilogue {
    using V = vec_t<L>;
    float add[T], mul[T];
    V alpha, hi, lo;
    const float* noise;
    float noise_gain;
    bool scaled, use_clamp, unit_slope;
    TileEpilogue(const Epilogue& ep, int oc0)
        : alpha(splat<L>(ep.alpha)), hi(splat<L>(ep.clamp)), lo(splat<L>(-ep.clamp)), noise(ep.noise),
          noise_gain(ep.noise_gain), scaled(ep.scale != nullptr), use_clamp(ep.use_clamp),
          unit_slope(ep.unit_slope) {
        for (int o = 0; o < T; ++o) {
            add[o] = ep.bias[oc0 + o] * ep.gain;
            mul[o] = scaled ? ep.scale[oc0 + o] : 1.0f;
        }
    }
    // act(scale[c] * v + gain * bias[c] + nz) for the convolution output v of channel c = oc0 + o.
    inline V apply(V v, int o, const V& nz) const {
        if (scaled) v = v * mul[o];
        v = v + add[o] + nz;
        if (unit_slope) {  // a multiply and a max
            const V a = v * alpha;
            v = v > a ? v : a;
        } else {
            v = v > 0 ? v : v * alpha;
        }
        if (use_clamp) {
            v = v > hi ? hi : v;
            v = v < lo ? lo : v;
        }
        return v;
    }
    inline V noise_at(int y, int W, int x0) const {
        if (noise == nullptr) return V{};
        if (x0 + L <= W) return load<L>(noise + (size_t)y * W + x0) * noise_gain;
        float buf[L];
        gather_row<L>(noise + (size_t)y * W, W, x0, 0, 0, buf);
        return load<L>(buf) * noise_gain;
    }
};

// Calls f(std::integral_constant<int, t>{}) for a runtime value 1 <= t <= T, so that every tile size gets
// its own compiled loop with the accumulators in registers.
template <int T, typename F>
void with_tile_size(int t, F&& f) {
    if constexpr (T >= 1) {
        if (t == T) return f(std::integral_constant<int, T>{});
        return with_tile_size<T - 1>(t, std::forward<F>(f));
    }
}

// Calls f(std::integral_constant<int, L>{}) with the widest vector (VW, 8 or 4 lanes) that tiles a row of
// width W; VW when none does (the kernels then gather the last columns).
template <typename F>
void with_lanes(int64_t W, F&& f) {
    if (W % VW == 0 || (W % 8 != 0 && W % 4 != 0)) return f(std::integral_constant<int, VW>{});
    if (VW > 8 && W % 8 == 0) return f(std::integral_constant<int, 8>{});
    return f(std::integral_constant<int, 4>{});
}

// One output row y of the T output channels [oc0, oc0 + T) of one sample, L columns at a time.
// x: [IC, H, W]; wt: [IC, 3, 3, T] (the tile's weights, see pack_tile); out: [OC, H, W]. Inlined into its
// caller by force: compiled on its own, the 16-channel tiles ran 10-15 % slower (measured).
template <int T, int L>
__attribute__((always_inline)) inline void conv3x3_row(const float* x, int IC, int H, int W, const float* wt,
                                                       int oc0, int y, const Epilogue& ep, float* out) {
    using V = vec_t<L>;
    const TileEpilogue<T, L> te(ep, oc0);
    for (int x0 = 0; x0 < W; x0 += L) {
        V acc[T];
        for (int o = 0; o < T; ++o) acc[o] = V{};
        // Rows made of whole vectors need no gathering: the outermost neighbours are lane shifts.
        const bool whole = (W % L) == 0;
        const bool edge = (x0 == 0) || (x0 + L + 1 > W);
        for (int ic = 0; ic < IC; ++ic) {
            const float* plane = x + (size_t)ic * H * W;
            const float* wic = wt + (size_t)ic * 9 * T;
            for (int ky = 0; ky < 3; ++ky) {
                const int yy = y + ky - 1;
                if (yy < 0 || yy >= H) continue;
                const float* row = plane + (size_t)yy * W;
                V v0, v1, v2;
                if (!edge) {
                    v0 = load<L>(row + x0 - 1);
                    v1 = load<L>(row + x0);
                    v2 = load<L>(row + x0 + 1);
                } else if (whole) {
                    v1 = load<L>(row + x0);
                    v0 = x0 == 0 ? Lanes<L>::shift_right(v1) : load<L>(row + x0 - 1);
                    v2 = x0 + L == W ? Lanes<L>::shift_left(v1) : load<L>(row + x0 + 1);
                } else {
                    float buf[L + 2];
                    gather_row<L>(row, W, x0, 1, 1, buf);
                    v0 = load<L>(buf);
                    v1 = load<L>(buf + 1);
                    v2 = load<L>(buf + 2);
                }
                // One tap at a time across the tile: T independent multiply-adds in flight.
                const float* wk = wic + ky * 3 * T;
                for (int o = 0; o < T; ++o) acc[o] += wk[o] * v0;
                for (int o = 0; o < T; ++o) acc[o] += wk[T + o] * v1;
                for (int o = 0; o < T; ++o) acc[o] += wk[2 * T + o] * v2;
            }
        }
        const V nz = te.noise_at(y, W, x0);
        for (int o = 0; o < T; ++o)
            store_cols<L>(out + ((size_t)(oc0 + o) * H + y) * W, W, x0, te.apply(acc[o], o, nz));
    }
}

// Images narrower than a vector (4 and 8 px): a vector covers VW / W whole rows of the flattened image, so all
// lanes work. The neighbours come from a copy of each input plane with a zero row above and below (and one
// zero at either end); the lanes of the first (last) column drop their left (right) neighbour by a mask.
// xpad: [IC, flat_stride(H, W)] (see pad_planes); out: [OC, H * W]; H * W a multiple of VW.
inline int flat_stride(int H, int W) { return (H + 2) * W + 2; }

std::vector<float> pad_planes(const float* x, int IC, int H, int W) {
    const int stride = flat_stride(H, W);
    std::vector<float> xpad((size_t)IC * stride, 0.0f);
    for (int ic = 0; ic < IC; ++ic)
        std::memcpy(xpad.data() + (size_t)ic * stride + 1 + W, x + (size_t)ic * H * W, sizeof(float) * H * W);
    return xpad;
}

template <int T>
void conv3x3_flat(const float* xpad, int IC, int H, int W, const float* wt, int oc0, const Epilogue& ep,
                  float* out) {
    const int HW = H * W, stride = flat_stride(H, W);
    float left[VW], right[VW];
    for (int i = 0; i < VW; ++i) {
        left[i] = (i % W) != 0 ? 1.0f : 0.0f;
        right[i] = (i % W) != W - 1 ? 1.0f : 0.0f;
    }
    const vec keep_left = load<VW>(left), keep_right = load<VW>(right);
    const TileEpilogue<T, VW> te(ep, oc0);
    for (int p0 = 0; p0 < HW; p0 += VW) {
        vec acc[T];
        for (int o = 0; o < T; ++o) acc[o] = vec{};
        for (int ic = 0; ic < IC; ++ic) {
            const float* centre = xpad + (size_t)ic * stride + 1 + W + p0;
            const float* wic = wt + (size_t)ic * 9 * T;
            for (int ky = 0; ky < 3; ++ky) {
                const float* r = centre + (ky - 1) * W;
                const vec v0 = load<VW>(r - 1) * keep_left, v1 = load<VW>(r), v2 = load<VW>(r + 1) * keep_right;
                const float* wk = wic + ky * 3 * T;
                for (int o = 0; o < T; ++o) acc[o] += wk[o] * v0;
                for (int o = 0; o < T; ++o) acc[o] += wk[T + o] * v1;
                for (int o = 0; o < T; ++o) acc[o] += wk[2 * T + o] * v2;
            }
        }
        const vec nz = te.noise_at(0, HW, p0);  // the noise plane, flattened the same way
        for (int o = 0; o < T; ++o) store(out + (size_t)(oc0 + o) * HW + p0, te.apply(acc[o], o, nz));
    }
}

// fy, fx with f[u][v] = fy[u] * fx[v] for a 4x4 filter f (row sums, and column sums over the total), or false
// when f is not such an outer product.
bool separable_taps(const float* f, float* fy, float* fx) {
    float total = 0.0f, largest = 0.0f;
    for (int k = 0; k < 4; ++k) fy[k] = fx[k] = 0.0f;
    for (int u = 0; u < 4; ++u)
        for (int v = 0; v < 4; ++v) {
            fy[u] += f[u * 4 + v];
            fx[v] += f[u * 4 + v];
            largest = std::max(largest, std::abs(f[u * 4 + v]));
        }
    for (int u = 0; u < 4; ++u) total += fy[u];
    if (total == 0.0f) return false;
    for (int v = 0; v < 4; ++v) fx[v] /= total;
    for (int u = 0; u < 4; ++u)
        for (int v = 0; v < 4; ++v)
            if (std::abs(fy[u] * fx[v] - f[u * 4 + v]) > 1e-6f * largest) return false;
    return true;
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
    // Per channel and ring slot: E at [0, W + pad) and O shifted by one ([1, W]) with zeros around, so that
    // the filter's neighbours O[j-1] and O[j+1] and E[j+1] are plain loads.
    int stride;
    std::vector<float> data;
    UpRing(int T, int W, int L) : stride(W + 2 * L), data((size_t)T * 4 * 2 * stride, 0.0f) {}
    float* even(int o, int slot) { return data.data() + (((size_t)o * 4 + slot) * 2 + 0) * stride; }
    float* odd(int o, int slot) { return data.data() + (((size_t)o * 4 + slot) * 2 + 1) * stride + 1; }
};

// Row ty of t for the T output channels of a tile into ring slot `slot`. x: [IC, H, W] with W a multiple of
// L; wt: [IC, 3, 3, T] (the tile's weights, packed so that every weight address is a constant offset).
template <int T, int L>
void up_t_row(const float* x, int IC, int H, int W, const float* wt, int ty, UpRing& ring, int slot) {
    using V = vec_t<L>;
    int kys[2], nky = 0;
    for (int ky = 0; ky < 3; ++ky) {
        const int d = ty - ky;
        if (d >= 0 && d % 2 == 0 && d / 2 < H) kys[nky++] = ky;
    }
    // Even columns take the taps kx = 0 (column j) and kx = 2 (column j - 1), odd ones kx = 1 (column j).
    if constexpr (T > MAX_UP_TILE) {  // wide tiles: even and odd columns in two passes, T accumulators each
        for (int j0 = 0; j0 < W; j0 += L) {
            V acc[T];
            for (int o = 0; o < T; ++o) acc[o] = V{};
            for (int ic = 0; ic < IC; ++ic) {
                for (int k = 0; k < nky; ++k) {
                    const float* row = x + ((size_t)ic * H + (ty - kys[k]) / 2) * W;
                    const V cur = load<L>(row + j0);
                    const V prev = j0 == 0 ? Lanes<L>::shift_right(cur) : load<L>(row + j0 - 1);
                    const float* wk = wt + ((size_t)ic * 9 + kys[k] * 3) * T;
                    for (int o = 0; o < T; ++o) acc[o] += wk[o] * cur;
                    for (int o = 0; o < T; ++o) acc[o] += wk[2 * T + o] * prev;
                }
            }
            for (int o = 0; o < T; ++o) store(ring.even(o, slot) + j0, acc[o]);
            for (int o = 0; o < T; ++o) acc[o] = V{};
            for (int ic = 0; ic < IC; ++ic) {
                for (int k = 0; k < nky; ++k) {
                    const V cur = load<L>(x + ((size_t)ic * H + (ty - kys[k]) / 2) * W + j0);
                    const float* wk = wt + ((size_t)ic * 9 + kys[k] * 3) * T;
                    for (int o = 0; o < T; ++o) acc[o] += wk[T + o] * cur;
                }
            }
            for (int o = 0; o < T; ++o) store(ring.odd(o, slot) + j0, acc[o]);
        }
    } else {  // narrow tiles: both in one pass, each input vector feeding 2T accumulators
    for (int j0 = 0; j0 < W; j0 += L) {
        V even[T], odd[T];
        for (int o = 0; o < T; ++o) even[o] = odd[o] = V{};
        for (int ic = 0; ic < IC; ++ic) {
            for (int k = 0; k < nky; ++k) {
                const float* row = x + ((size_t)ic * H + (ty - kys[k]) / 2) * W;
                const V cur = load<L>(row + j0);
                const V prev = j0 == 0 ? Lanes<L>::shift_right(cur) : load<L>(row + j0 - 1);
                const float* wk = wt + ((size_t)ic * 9 + kys[k] * 3) * T;
                for (int o = 0; o < T; ++o) even[o] += wk[o] * cur;
                for (int o = 0; o < T; ++o) odd[o] += wk[T + o] * cur;
                for (int o = 0; o < T; ++o) even[o] += wk[2 * T + o] * prev;
            }
        }
        for (int o = 0; o < T; ++o) store(ring.even(o, slot) + j0, even[o]);
        for (int o = 0; o < T; ++o) store(ring.odd(o, slot) + j0, odd[o]);
    }
    }
    // E[W] = t[ty][2W]: only the kx = 2 tap of the last input column reaches it. Vectorised over the
    // tile's channels (pack_tile pads the weights so that whole vectors can be read).
    constexpr int NV = (T + VW - 1) / VW;
    vec e[NV];
    for (int i = 0; i < NV; ++i) e[i] = vec{};
    for (int ic = 0; ic < IC; ++ic) {
        for (int k = 0; k < nky; ++k) {
            const float v = x[((size_t)ic * H + (ty - kys[k]) / 2) * W + W - 1];
            const float* wk = wt + ((size_t)ic * 9 + kys[k] * 3 + 2) * T;
            for (int i = 0; i < NV; ++i) e[i] += v * load<VW>(wk + i * VW);
        }
    }
    float lanes[NV * VW];
    for (int i = 0; i < NV; ++i) store(lanes + i * VW, e[i]);
    for (int o = 0; o < T; ++o) ring.even(o, slot)[W] = lanes[o];
}

// The weights of output channels [oc0, oc0 + T) as [IC, 3, 3, T]: weight[oc][ic][k] * in_scale[ic] *
// out_scale[oc] (either scale may be null). Per-sample weights are formed here, where the weights are
// transposed anyway, rather than in passes over an [N, OC, IC, 3, 3] tensor before the call.
Floats pack_tile(const float* weight, const float* in_scale, const float* out_scale, int IC, int oc0, int T) {
    Floats wt((size_t)IC * 9 * T + 2 * VW);  // padded: vectors may be read at any offset
    std::fill(wt.end() - 2 * VW, wt.end(), 0.0f);
    for (int o = 0; o < T; ++o) {
        const float* wo = weight + (size_t)(oc0 + o) * IC * 9;
        const float so = out_scale != nullptr ? out_scale[oc0 + o] : 1.0f;
        for (int ic = 0; ic < IC; ++ic) {
            const float f = (in_scale != nullptr ? in_scale[ic] : 1.0f) * so;
            for (int k = 0; k < 9; ++k) wt[((size_t)ic * 9 + k) * T + o] = wo[ic * 9 + k] * f;
        }
    }
    return wt;
}

// Output row Y of the tile's T channels from the ring with a separable filter taps[u][v] = fy[u] * fx[v]:
// along y (E' = sum_u fy[u] E_u, likewise O'), then along x, all in registers: a vector's x neighbours are
// lane shifts across it and the vectors either side, so nothing is stored and read back (an unaligned
// reload of just-stored lines stalls on store forwarding). Half the multiply-adds of the 4x4 form.
// The filters are compiled apart from up_tile (noinline): inlined, their constants crowded the transposed
// convolution's accumulators out of the registers (measured: spills, up to 15 % slower).
template <int T, int L>
__attribute__((noinline)) void up_fir_row_separable(UpRing& ring, int Y, int Ht, int W, const float* fy,
                                                    const float* fx, const TileEpilogue<T, L>& tile_epilogue,
                                                    int oc0, float* out, int Ho) {
    using V = vec_t<L>;
    const TileEpilogue<T, L> te = tile_epilogue;  // a local copy, which the stores below cannot alias
    float c[4];
    int slot[4];
    for (int u = 0; u < 4; ++u) {
        const int ty = Y + u - 1;
        const bool in = ty >= 0 && ty < Ht;
        slot[u] = in ? (ty & 3) : (Y + 1) & 3;  // outside t: row Y + 1 (which is inside) with a zero tap
        c[u] = in ? fy[u] : 0.0f;
    }
    const V c0 = splat<L>(c[0]), c1 = splat<L>(c[1]), c2 = splat<L>(c[2]), c3 = splat<L>(c[3]);
    const V f0 = splat<L>(fx[0]), f1 = splat<L>(fx[1]), f2 = splat<L>(fx[2]), f3 = splat<L>(fx[3]);
    const int Wo = 2 * W;
    for (int o = 0; o < T; ++o) {
        const float* E0 = ring.even(o, slot[0]);
        const float* E1 = ring.even(o, slot[1]);
        const float* E2 = ring.even(o, slot[2]);
        const float* E3 = ring.even(o, slot[3]);
        const float* O0 = ring.odd(o, slot[0]);
        const float* O1 = ring.odd(o, slot[1]);
        const float* O2 = ring.odd(o, slot[2]);
        const float* O3 = ring.odd(o, slot[3]);
        float* dst = out + ((size_t)(oc0 + o) * Ho + Y) * Wo;
        const float last = c[0] * E0[W] + c[1] * E1[W] + c[2] * E2[W] + c[3] * E3[W];  // E'[W]; O'[W] = 0
        V ecur = (c0 * load<L>(E0) + c1 * load<L>(E1)) + (c2 * load<L>(E2) + c3 * load<L>(E3));
        V ocur = (c0 * load<L>(O0) + c1 * load<L>(O1)) + (c2 * load<L>(O2) + c3 * load<L>(O3));
        V oprev = V{};
        for (int j0 = 0; j0 < W; j0 += L) {
            V enext = V{}, onext = V{};
            const int j1 = j0 + L;
            if (j1 < W) {  // sums in pairs: shorter dependency chains
                enext = (c0 * load<L>(E0 + j1) + c1 * load<L>(E1 + j1)) +
                        (c2 * load<L>(E2 + j1) + c3 * load<L>(E3 + j1));
                onext = (c0 * load<L>(O0 + j1) + c1 * load<L>(O1 + j1)) +
                        (c2 * load<L>(O2 + j1) + c3 * load<L>(O3 + j1));
            } else {
                enext[0] = last;
            }
            const V e1 = right_of<L>(ecur, enext), om = left_of<L>(oprev, ocur), o1 = right_of<L>(ocur, onext);
            const V even = (f0 * om + f1 * ecur) + (f2 * ocur + f3 * e1);  // t[2j-1], t[2j], t[2j+1], t[2j+2]
            const V odd = (f0 * ecur + f1 * ocur) + (f2 * e1 + f3 * o1);   // t[2j], ..., t[2j+3]
            const int X = 2 * j0;
            store(dst + X, te.apply(Lanes<L>::zip_lo(even, odd), o, te.noise_at(Y, Wo, X)));
            store(dst + X + L, te.apply(Lanes<L>::zip_hi(even, odd), o, te.noise_at(Y, Wo, X + L)));
            oprev = ocur;
            ecur = enext;
            ocur = onext;
        }
    }
}

// Output row Y of the tile's T channels from the ring with any 4x4 filter `taps` (correlation).
template <int T, int L>
__attribute__((noinline)) void up_fir_row(UpRing& ring, int Y, int Ht, int W, const float* taps,
                                          const TileEpilogue<T, L>& tile_epilogue, int oc0, float* out, int Ho) {
    using V = vec_t<L>;
    const TileEpilogue<T, L> te = tile_epilogue;  // a local copy, as above
    const int Wo = 2 * W;
    for (int o = 0; o < T; ++o) {
        float* dst = out + ((size_t)(oc0 + o) * Ho + Y) * Wo;
        for (int j0 = 0; j0 < W; j0 += L) {
            V even = V{}, odd = V{};
            for (int u = 0; u < 4; ++u) {
                const int ty = Y + u - 1;
                if (ty < 0 || ty >= Ht) continue;
                const float* E = ring.even(o, ty & 3) + j0;
                const float* O = ring.odd(o, ty & 3) + j0;
                const V e0 = load<L>(E), e1 = load<L>(E + 1), o0 = load<L>(O), om = load<L>(O - 1),
                        o1 = load<L>(O + 1);
                const float* f = taps + u * 4;
                even += f[0] * om + f[1] * e0 + f[2] * o0 + f[3] * e1;  // t[2j-1], t[2j], t[2j+1], t[2j+2]
                odd += f[0] * e0 + f[1] * o0 + f[2] * e1 + f[3] * o1;   // t[2j], ..., t[2j+3]
            }
            // O[W] (= t[2W+1]) lies outside t: the ring keeps it zero.
            const int X = 2 * j0;
            store(dst + X, te.apply(Lanes<L>::zip_lo(even, odd), o, te.noise_at(Y, Wo, X)));
            store(dst + X + L, te.apply(Lanes<L>::zip_hi(even, odd), o, te.noise_at(Y, Wo, X + L)));
        }
    }
}

// sep: null, or {fy[4], fx[4]} when taps[u][v] = fy[u] * fx[v] (see separable_taps).
template <int T, int L>
void up_tile(const float* x, int IC, int H, int W, const float* wt, int oc0, const float* taps,
             const float* sep, const Epilogue& ep, float* out) {
    const int Ht = 2 * H + 1, Ho = 2 * H;
    UpRing ring(T, W, L);
    const TileEpilogue<T, L> te(ep, oc0);
    int done = -1;  // last t row computed
    for (int Y = 0; Y < Ho; ++Y) {
        while (done < std::min(Y + 2, Ht - 1)) {
            ++done;
            up_t_row<T, L>(x, IC, H, W, wt, done, ring, done & 3);
        }
        if (sep != nullptr)
            up_fir_row_separable<T, L>(ring, Y, Ht, W, sep, sep + 4, te, oc0, out, Ho);
        else
            up_fir_row<T, L>(ring, Y, Ht, W, taps, te, oc0, out, Ho);
    }
}

// ---- Output of a block: toRGB (1x1 modulated convolution) plus the 2x upsampled skip image, in one pass ----
//
// img[n][k] = clamp(sum_c w[n][k][c] x[n][c] + bias[k]) + up2(skip[n][k]). up2 is upfirdn2d with up = 2 and
// a separable 4-tap filter, zero padded as in upsample2d: with correlation taps c along one axis,
//   u[2q] = c0 s[q-1] + c2 s[q],   u[2q+1] = c1 s[q] + c3 s[q+1]   (s zero outside the image).
// Each output row takes two rows of the skip image, filters them along y into a zero-bordered line, and the
// line along x into even and odd columns that are interleaved; the 1x1 convolution then reads x once.
constexpr int MAX_RGB = 4;  // output channels kept in registers

struct SkipLine {
    // Per channel: the y-filtered skip row at [VW, VW + Ws), zeros around it; the x-upsampled row at `up`.
    int Ws, stride;
    std::vector<float> line, up;
    SkipLine(int K, int Ws_) : Ws(Ws_), stride(Ws_ + 3 * VW), line((size_t)K * stride, 0.0f),
                               up((size_t)K * 2 * stride, 0.0f) {}
    float* line_of(int k) { return line.data() + (size_t)k * stride + VW; }
    float* up_of(int k) { return up.data() + (size_t)k * 2 * stride; }
};

// Row Y of up2(skip) for the K channels of one sample into line.up_of(k). skip: [K, Hs, Ws].
void skip_row(const float* skip, int K, int Hs, const float* cy, const float* cx, int Y, SkipLine& line) {
    const int Ws = line.Ws, q = Y / 2;
    // The two skip rows that reach output row Y and their weights (a row outside the image contributes 0).
    int rows[2];
    float wy[2];
    if (Y % 2 == 0) {
        rows[0] = q - 1; wy[0] = cy[0]; rows[1] = q; wy[1] = cy[2];
    } else {
        rows[0] = q; wy[0] = cy[1]; rows[1] = q + 1; wy[1] = cy[3];
    }
    for (int k = 0; k < K; ++k) {
        float* v = line.line_of(k);
        for (int j = 0; j < Ws; ++j) v[j] = 0.0f;
        for (int r = 0; r < 2; ++r) {
            if (rows[r] < 0 || rows[r] >= Hs) continue;
            const float* src = skip + ((size_t)k * Hs + rows[r]) * Ws;
            for (int j = 0; j < Ws; ++j) v[j] += wy[r] * src[j];
        }
        float* u = line.up_of(k);
        const vec c0 = splat<VW>(cx[0]), c1 = splat<VW>(cx[1]), c2 = splat<VW>(cx[2]), c3 = splat<VW>(cx[3]);
        for (int j0 = 0; j0 < Ws; j0 += VW) {
            const vec prev = load<VW>(v + j0 - 1), cur = load<VW>(v + j0), next = load<VW>(v + j0 + 1);
            const vec even = c0 * prev + c2 * cur, odd = c1 * cur + c3 * next;
            store(u + 2 * j0, Lanes<VW>::zip_lo(even, odd));
            store(u + 2 * j0 + VW, Lanes<VW>::zip_hi(even, odd));
        }
    }
}

// acc[k][p] += sum_{g < G} w[k][c0 + g] * x[c0 + g][p] over p in [0, span): G input planes at a time, each read
// as one contiguous run (streaming many planes at once defeats the prefetcher when a plane is large).
template <int K, int G>
void rgb_accumulate(const float* x, int64_t plane, int C, int c0, const float* w, int span, float* acc, int stride) {
    // The pass's weights in a local array: read through w, each would be reloaded after every store to acc
    // (which may alias w as far as the compiler knows); as locals they stay in registers (measured: 15-25 %).
    float wl[K][G];
    for (int k = 0; k < K; ++k)
        for (int g = 0; g < G; ++g) wl[k][g] = w[k * C + c0 + g];
    for (int p = 0; p < span; p += VW) {
        vec a[K];
        for (int k = 0; k < K; ++k) a[k] = load<VW>(acc + (size_t)k * stride + p);
        for (int g = 0; g < G; ++g) {
            const float* src = x + (size_t)(c0 + g) * plane + p;
            vec v;
            if (p + VW <= span) {
                v = load<VW>(src);
            } else {
                float buf[VW] = {};
                for (int i = 0; p + i < span; ++i) buf[i] = src[i];
                v = load<VW>(buf);
            }
            for (int k = 0; k < K; ++k) a[k] += wl[k][g] * v;
        }
        for (int k = 0; k < K; ++k) store(acc + (size_t)k * stride + p, a[k]);
    }
}

// Rows [y0, y1) of the block output for the K channels of one sample. x: [C, H, W]; w: [K, C]; skip: [K, H/2,
// W/2] or null; acc: K rows of `stride` >= (y1 - y0) * W + VW floats.
template <int K>
void rgb_rows(const float* x, int C, int H, int W, const float* w, const float* bias, float clamp, bool use_clamp,
              const float* skip, const float* cy, const float* cx, SkipLine& line, int y0, int y1, float* acc,
              int stride, float* out) {
    const int span = (y1 - y0) * W;
    const int64_t plane = (int64_t)H * W;
    const float* xs = x + (size_t)y0 * W;
    for (int k = 0; k < K; ++k) std::fill(acc + (size_t)k * stride, acc + (size_t)k * stride + span, bias[k]);
    // Passes over the accumulators of at most 8 planes each, as equal as possible.
    const int passes = (C + 7) / 8;
    for (int i = 0, c = 0; i < passes; ++i) {
        const int g = C / passes + (i < C % passes ? 1 : 0);
        with_tile_size<8>(g, [&](auto planes) {
            rgb_accumulate<K, decltype(planes)::value>(xs, plane, C, c, w, span, acc, stride);
        });
        c += g;
    }
    for (int y = y0; y < y1; ++y) {
        if (skip != nullptr) skip_row(skip, K, H / 2, cy, cx, y, line);
        for (int k = 0; k < K; ++k) {
            const float* row = acc + (size_t)k * stride + (size_t)(y - y0) * W;
            for (int x0 = 0; x0 < W; x0 += VW) {
                vec v = load<VW>(row + x0);
                if (use_clamp) {
                    const vec hi = splat<VW>(clamp), lo = splat<VW>(-clamp);
                    v = v > hi ? hi : v;
                    v = v < lo ? lo : v;
                }
                if (skip != nullptr) v += load<VW>(line.up_of(k) + x0);
                store_cols<VW>(out + ((size_t)k * H + y) * W, W, x0, v);
            }
        }
    }
}

// Output channels split into tiles of at most max_tile, as equal as possible.
struct Tiling {
    int count, base, extra;
    explicit Tiling(int channels, int max_tile = MAX_TILE) {
        count = (channels + max_tile - 1) / max_tile;
        base = channels / count;
        extra = channels % count;
    }
    int start(int i) const { return i * base + (i < extra ? i : extra); }
    int size(int i) const { return base + (i < extra ? 1 : 0); }
};

// How one call folds the styles into the convolution (see the top of the file). Per-sample weights cost
// IC * 9 * OC multiplies per sample; scaling the input instead costs IC * H * W. So small images (up to
// 9 * OC pixels: the 4-32 px layers of narrow generators) are multiplied by the styles and convolved with
// weights packed once per call, and the demodulation becomes a per-channel factor of the epilogue; larger
// ones get per-sample weights with everything folded in.
struct Modulation {
    bool scale_input = false;
    std::vector<float> demod;                     // [N, OC]: gain / |weight[o] * styles[n]|
    Floats x_scaled;                              // scale_input: [N, IC, H, W], x * styles
    std::vector<Floats> shared;                   // scale_input: each tile's weights (pack_tile, unscaled)

    Modulation(const float* x, const float* weight, const float* styles, float gain, int64_t N, int64_t IC,
               int64_t OC, int64_t HW, const Tiling& tiles) : demod(N * OC) {
        // |weight[o] * styles[n]|^2 = sum_ic sq[o][ic] * styles[n][ic]^2 with sq[o][ic] = sum_k weight[o][ic][k]^2.
        // sq reads the weight in order (from memory, as a rule: one pass the prefetcher follows); the sums over
        // ic run in vectors (a scalar chain of double additions cost as much as a small layer).
        const int64_t R = OC * IC;
        Floats sq(R), s2(N * IC);
        for (int64_t r = 0; r < R; ++r) {
            float acc = 0.0f;
            for (int k = 0; k < 9; ++k) acc += weight[r * 9 + k] * weight[r * 9 + k];
            sq[r] = acc;
        }
        for (int64_t i = 0; i < N * IC; ++i) s2[i] = styles[i] * styles[i];
        for (int64_t n = 0; n < N; ++n) {
            const float* sn = s2.data() + n * IC;
            for (int64_t o = 0; o < OC; ++o) {
                const float* q = sq.data() + o * IC;
                vec acc = vec{};
                int64_t ic = 0;
                for (; ic + VW <= IC; ic += VW) acc += load<VW>(q + ic) * load<VW>(sn + ic);
                float lanes[VW];
                store(lanes, acc);
                double norm = 0.0;
                for (int i = 0; i < VW; ++i) norm += lanes[i];
                for (; ic < IC; ++ic) norm += (double)q[ic] * sn[ic];
                demod[n * OC + o] = gain / std::sqrt((float)norm + 1e-8f);
            }
        }
        scale_input = HW <= 9 * OC;
        if (!scale_input) return;
        x_scaled.resize(N * IC * HW);
        at::parallel_for(0, N * IC, 1, [&](int64_t begin, int64_t end) {
            for (int64_t r = begin; r < end; ++r)
                for (int64_t p = 0; p < HW; ++p) x_scaled[r * HW + p] = x[r * HW + p] * styles[r];
        });
        for (int t = 0; t < tiles.count; ++t)
            shared.push_back(pack_tile(weight, nullptr, nullptr, (int)IC, tiles.start(t), tiles.size(t)));
    }
    // The input the kernels convolve for sample n.
    const float* input(const float* x, int64_t n, int64_t IC, int64_t HW) const {
        return scale_input ? x_scaled.data() + n * IC * HW : x + n * IC * HW;
    }
    // The weights of tile t for sample n: the shared pack, or sample n's packed into `storage`.
    const float* tile(const float* weight, const float* styles, int64_t n, int64_t IC, int64_t OC,
                      const Tiling& tiles, int t, Floats& storage) const {
        if (scale_input) return shared[t].data();
        storage = pack_tile(weight, styles + n * IC, demod.data() + n * OC, (int)IC, tiles.start(t), tiles.size(t));
        return storage.data();
    }
    // The epilogue's per-channel factors for sample n.
    const float* epilogue_scale(int64_t n, int64_t OC) const {
        return scale_input ? demod.data() + n * OC : nullptr;
    }
};

void check_float_cpu(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
                name, " must be a contiguous float32 CPU tensor");
}

Epilogue make_epilogue(const torch::Tensor& bias, double gain, double noise_strength, double alpha,
                       double clamp) {
    Epilogue ep;
    ep.bias = bias.data_ptr<float>();
    ep.scale = nullptr;
    ep.noise = nullptr;
    ep.gain = (float)gain;
    ep.noise_gain = (float)(gain * noise_strength);
    ep.alpha = (float)alpha;
    ep.unit_slope = alpha >= 0.0 && alpha <= 1.0;
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

// The correlation taps along y and along x of upsample2d with a separable 4x4 filter (gain 4 included):
// false when the filter is not an outer product of two 4-tap filters.
bool upsampling_taps(const float* f, float* cy, float* cx) {
    float fy[4], fx[4];
    if (!separable_taps(f, fy, fx)) return false;
    for (int k = 0; k < 4; ++k) {  // upsample2d convolves: correlation taps are the filter reversed
        cy[k] = 4.0f * fy[3 - k];
        cx[k] = fx[3 - k];
    }
    return true;
}

// A block's output image for one call: the per-sample toRGB weights w[n][k][c] = weight[k][c] * styles[n][c] *
// weight_gain, the skip image and its upsampling taps, and the output [N, K, H, W]. Rows are produced by
// run(), from rgb_skip() or right after conv3x3_lrelu() computed them (while they are still in cache).
struct RgbOutput {
    int64_t N = 0, K = 0, C = 0, H = 0, W = 0, rows = 1;
    std::vector<float> wn;  // [N, K, C]
    const float* bias = nullptr;
    const float* skip = nullptr;  // [N, K, H/2, W/2] or null
    float cy[4] = {}, cx[4] = {}, clamp = 0.0f;
    bool use_clamp = false, separable = true;
    torch::Tensor out;

    // The input of toRGB is [N, C, H, W]; weight: [K, C, 1, 1]; styles: [N, C]; bias: [K]; skip: empty or
    // [N, K, H/2, W/2]; filter: the 4x4 upsampling filter (used with skip). `separable` is false, and nothing
    // is allocated, when the filter is not an outer product.
    RgbOutput(at::IntArrayRef input_sizes, const torch::TensorOptions& options, const torch::Tensor& weight,
              const torch::Tensor& styles, double weight_gain, const torch::Tensor& bias_, double clamp_,
              const torch::Tensor& skip_, const torch::Tensor& filter) {
        check_float_cpu(weight, "rgb weight");
        check_float_cpu(styles, "rgb styles");
        check_float_cpu(bias_, "rgb bias");
        TORCH_CHECK(input_sizes.size() == 4 && weight.dim() == 4 && weight.size(1) == input_sizes[1] &&
                    weight.size(2) == 1 && weight.size(3) == 1 && bias_.numel() == weight.size(0),
                    "x must be [N, C, H, W], the toRGB weight [K, C, 1, 1] and its bias [K]");
        N = input_sizes[0], C = input_sizes[1], H = input_sizes[2], W = input_sizes[3], K = weight.size(0);
        TORCH_CHECK(styles.dim() == 2 && styles.size(0) == N && styles.size(1) == C, "the toRGB styles must be [N, C]");
        TORCH_CHECK(K >= 1 && K <= MAX_RGB, "at most ", MAX_RGB, " image channels");
        if (skip_.numel() > 0) {
            check_float_cpu(skip_, "skip");
            check_float_cpu(filter, "filter");
            TORCH_CHECK(skip_.dim() == 4 && skip_.size(0) == N && skip_.size(1) == K && 2 * skip_.size(2) == H &&
                        2 * skip_.size(3) == W, "skip must be [N, K, H/2, W/2]");
            TORCH_CHECK(filter.dim() == 2 && filter.size(0) == 4 && filter.size(1) == 4, "filter must be 4x4");
            separable = upsampling_taps(filter.data_ptr<float>(), cy, cx);
            skip = skip_.data_ptr<float>();
        }
        if (!separable) return;
        wn.resize(N * K * C);
        const float* wk = weight.data_ptr<float>();
        const float* st = styles.data_ptr<float>();
        for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k)
                for (int64_t c = 0; c < C; ++c)
                    wn[(n * K + k) * C + c] = wk[k * C + c] * st[n * C + c] * (float)weight_gain;
        bias = bias_.data_ptr<float>();
        use_clamp = std::isfinite(clamp_);
        clamp = use_clamp ? (float)clamp_ : 0.0f;
        rows = std::max<int64_t>(1, std::min<int64_t>(H, 2048 / std::max<int64_t>(W, 1)));  // ~2048 px: L1
        out = cached_empty({N, K, H, W}, options);
    }

    struct Scratch {
        SkipLine line;
        int stride;
        std::vector<float> acc;
    };
    Scratch scratch() const {
        const int stride = (int)((rows * W + VW - 1) / VW * VW + VW);
        return Scratch{SkipLine((int)K, (int)(W / 2)), stride, std::vector<float>((size_t)K * stride)};
    }

    // Rows [y0, y1) of sample n from x_n, that sample's [C, H, W] input of toRGB.
    void run(const float* x_n, int64_t n, int y0, int y1, Scratch& s) {
        float* od = out.data_ptr<float>() + n * K * H * W;
        for (int a = y0; a < y1; a += (int)rows) {
            const int b = (int)std::min<int64_t>(y1, a + rows);
            with_tile_size<MAX_RGB>((int)K, [&](auto k) {
                rgb_rows<decltype(k)::value>(x_n, (int)C, (int)H, (int)W, wn.data() + n * K * C, bias, clamp,
                                             use_clamp, skip != nullptr ? skip + n * K * (H / 2) * (W / 2) : nullptr,
                                             cy, cx, s.line, a, b, s.acc.data(), s.stride, od);
            });
        }
    }
};

// The arguments both layer kernels share: x [N, IC, H, W]; weight [OC, IC, 3, 3] (the layer's, shared);
// styles [N, IC]; bias [OC]. See the top of the file for what the kernels compute from them.
void check_layer_args(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& styles,
                      const torch::Tensor& bias) {
    check_float_cpu(x, "x");
    check_float_cpu(weight, "weight");
    check_float_cpu(styles, "styles");
    check_float_cpu(bias, "bias");
    TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 &&
                weight.size(3) == 3, "x must be [N, IC, H, W] and weight [OC, IC, 3, 3]");
    TORCH_CHECK(styles.dim() == 2 && styles.size(0) == x.size(0) && styles.size(1) == x.size(1),
                "styles must be [N, IC]");
    TORCH_CHECK(bias.numel() == weight.size(0), "bias must have OC elements");
}

// One worker's scratch for the block-output rows, or null without them.
std::unique_ptr<RgbOutput::Scratch> make_scratch(const RgbOutput* rgb) {
    return rgb != nullptr ? std::make_unique<RgbOutput::Scratch>(rgb->scratch()) : nullptr;
}

// y = act(conv3x3(x[n], w[n]) + b + noise) with zero padding 1; output [N, OC, H, W]. With rgb, the block's
// output image is computed from each block of rows of y right after them, while they are in cache.
torch::Tensor conv3x3_impl(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& styles,
                           const torch::Tensor& bias, const torch::Tensor& noise, double noise_strength, double gain,
                           double alpha, double clamp, RgbOutput* rgb) {
    check_layer_args(x, weight, styles, bias);
    const int64_t N = x.size(0), IC = x.size(1), H = x.size(2), W = x.size(3), OC = weight.size(0);
    check_noise(noise, N, H, W);
    auto out = cached_empty({N, OC, H, W}, x.options());
    const Tiling tiles((int)OC);
    const float* xd = x.data_ptr<float>();
    const float* wd = weight.data_ptr<float>();
    const float* sd = styles.data_ptr<float>();
    float* od = out.data_ptr<float>();
    const Modulation mod(xd, wd, sd, (float)gain, N, IC, OC, H * W, tiles);
    const Epilogue base = make_epilogue(bias, gain, noise_strength, alpha, clamp);
    if (W < VW && VW % W == 0 && (H * W) % VW == 0) {  // small images: flattened rows, one item per sample
        at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
            std::unique_ptr<RgbOutput::Scratch> scratch = make_scratch(rgb);
            for (int64_t n = begin; n < end; ++n) {
                const std::vector<float> xpad = pad_planes(mod.input(xd, n, IC, H * W), (int)IC, (int)H, (int)W);
                Epilogue ep = base;
                ep.noise = noise_plane(noise, n, H, W);
                ep.scale = mod.epilogue_scale(n, OC);
                for (int t = 0; t < tiles.count; ++t) {
                    Floats storage;
                    const float* wt = mod.tile(wd, sd, n, IC, OC, tiles, t, storage);
                    with_tile_size<MAX_TILE>(tiles.size(t), [&](auto tile) {
                        conv3x3_flat<decltype(tile)::value>(xpad.data(), (int)IC, (int)H, (int)W, wt,
                                                            tiles.start(t), ep, od + n * OC * H * W);
                    });
                }
                if (rgb != nullptr) rgb->run(od + n * OC * H * W, n, 0, (int)H, *scratch);
            }
        });
        return out;
    }
    // Work items: (sample, block of rows). Every tile of a row is computed before the next row, so the
    // three input rows it reads stay in cache across tiles instead of being re-read once per tile.
    constexpr int64_t kRows = 16;
    const int64_t chunks = (H + kRows - 1) / kRows;
    at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
        std::unique_ptr<RgbOutput::Scratch> scratch = make_scratch(rgb);
        std::vector<Floats> storage(tiles.count);
        std::vector<const float*> packed(tiles.count);
        int64_t packed_for = -1;
        for (int64_t i = begin; i < end; ++i) {
            const int64_t n = i / chunks;
            const int y0 = (int)((i % chunks) * kRows), y1 = (int)std::min<int64_t>(H, y0 + kRows);
            if (packed_for != n) {
                for (int t = 0; t < tiles.count; ++t) packed[t] = mod.tile(wd, sd, n, IC, OC, tiles, t, storage[t]);
                packed_for = n;
            }
            Epilogue ep = base;
            ep.noise = noise_plane(noise, n, H, W);
            ep.scale = mod.epilogue_scale(n, OC);
            const float* xn = mod.input(xd, n, IC, H * W);
            with_lanes(W, [&](auto lanes) {
                constexpr int L = decltype(lanes)::value;
                for (int y = y0; y < y1; ++y) {
                    for (int t = 0; t < tiles.count; ++t)
                        with_tile_size<MAX_TILE>(tiles.size(t), [&](auto tile) {
                            conv3x3_row<decltype(tile)::value, L>(xn, (int)IC, (int)H, (int)W, packed[t],
                                                                  tiles.start(t), y, ep, od + n * OC * H * W);
                        });
                }
            });
            if (rgb != nullptr) rgb->run(od + n * OC * H * W, n, y0, y1, *scratch);
        }
    });
    return out;
}

torch::Tensor conv3x3_lrelu(torch::Tensor x, torch::Tensor weight, torch::Tensor styles, torch::Tensor bias,
                            torch::Tensor noise, double noise_strength, double gain, double alpha, double clamp) {
    return conv3x3_impl(x, weight, styles, bias, noise, noise_strength, gain, alpha, clamp, nullptr);
}

// conv3x3_lrelu and, from its output, the block's output image (RgbOutput): {y, img}, or {} when the
// upsampling filter is not separable (nothing computed; the caller takes the separate steps).
std::vector<torch::Tensor> conv3x3_lrelu_rgb(torch::Tensor x, torch::Tensor weight, torch::Tensor styles,
                                             torch::Tensor bias, torch::Tensor noise, double noise_strength,
                                             double gain, double alpha, double clamp, torch::Tensor rgb_weight,
                                             torch::Tensor rgb_styles, double rgb_gain, torch::Tensor rgb_bias,
                                             double rgb_clamp, torch::Tensor skip, torch::Tensor filter) {
    check_layer_args(x, weight, styles, bias);
    RgbOutput rgb({x.size(0), weight.size(0), x.size(2), x.size(3)}, x.options(), rgb_weight, rgb_styles, rgb_gain,
                  rgb_bias, rgb_clamp, skip, filter);
    if (!rgb.separable) return {};
    auto y = conv3x3_impl(x, weight, styles, bias, noise, noise_strength, gain, alpha, clamp, &rgb);
    return {y, rgb.out};
}

// The upsampling layer (transposed convolution with w[n], see above, then the 4x4 low-pass `filter` applied as
// upfirdn2d does with up = 2: a true convolution with gain 4) with the epilogue; the input width must be a
// multiple of 4. Output [N, OC, 2H, 2W].
torch::Tensor up3x3_fir_lrelu(torch::Tensor x, torch::Tensor weight, torch::Tensor styles, torch::Tensor filter,
                              torch::Tensor bias, torch::Tensor noise, double noise_strength, double gain,
                              double alpha, double clamp) {
    check_layer_args(x, weight, styles, bias);
    check_float_cpu(filter, "filter");
    TORCH_CHECK(filter.dim() == 2 && filter.size(0) == 4 && filter.size(1) == 4, "filter must be 4x4");
    // up_tile correlates: flip the filter, and fold in the gain up^2 of the zero-inserting upsampling.
    float taps[16], sep[8];
    for (int i = 0; i < 16; ++i) taps[i] = 4.0f * filter.data_ptr<float>()[15 - i];
    const bool separable = separable_taps(taps, sep, sep + 4);
    const int64_t N = x.size(0), IC = x.size(1), H = x.size(2), W = x.size(3), OC = weight.size(0);
    TORCH_CHECK(W % 4 == 0, "the input width must be a multiple of 4");
    check_noise(noise, N, 2 * H, 2 * W);
    auto out = cached_empty({N, OC, 2 * H, 2 * W}, x.options());
    // Inputs up to 2 MiB per sample are read once per tile of at most MAX_UP_TILE channels, whose one-pass
    // rows are faster; larger ones in fewer, wider tiles, so fewer times (measured: 1.7 MiB inputs gain from
    // the narrow tiles, 8 MiB ones lose). Up to MAX_TILE output channels take one wide tile whatever the
    // input: read once, with one ring of rows (measured: 26 -> 13 channels at 128 px, 10-14 % faster).
    const bool small_input = IC * H * W * (int64_t)sizeof(float) <= (int64_t(2) << 20);
    const Tiling tiles((int)OC, small_input && OC > MAX_TILE ? MAX_UP_TILE : MAX_TILE);
    const float* xd = x.data_ptr<float>();
    const float* wd = weight.data_ptr<float>();
    const float* sd = styles.data_ptr<float>();
    const float* fd = taps;
    float* od = out.data_ptr<float>();
    const Modulation mod(xd, wd, sd, (float)gain, N, IC, OC, H * W, tiles);
    const Epilogue base = make_epilogue(bias, gain, noise_strength, alpha, clamp);
    at::parallel_for(0, N * tiles.count, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t n = i / tiles.count;
            const int t = (int)(i % tiles.count);
            Epilogue ep = base;
            ep.noise = noise_plane(noise, n, 2 * H, 2 * W);
            ep.scale = mod.epilogue_scale(n, OC);
            Floats storage;
            const float* wt = mod.tile(wd, sd, n, IC, OC, tiles, t, storage);
            with_lanes(W, [&](auto lanes) {
                with_tile_size<MAX_TILE>(tiles.size(t), [&](auto tile) {
                    up_tile<decltype(tile)::value, decltype(lanes)::value>(
                        mod.input(xd, n, IC, H * W), (int)IC, (int)H, (int)W, wt, tiles.start(t), fd,
                        separable ? sep : nullptr, ep, od + n * OC * 4 * H * W);
                });
            });
        }
    });
    return out;
}

// img = clamp(conv1x1(x[n], w[n]) + bias) + up2(skip): see RgbOutput for the arguments. Output [N, K, H, W],
// or an empty tensor when the filter is not separable (the caller then takes the separate steps).
torch::Tensor rgb_skip(torch::Tensor x, torch::Tensor weight, torch::Tensor styles, double weight_gain,
                       torch::Tensor bias, double clamp, torch::Tensor skip, torch::Tensor filter) {
    check_float_cpu(x, "x");
    RgbOutput rgb(x.sizes(), x.options(), weight, styles, weight_gain, bias, clamp, skip, filter);
    if (!rgb.separable) return torch::empty({0}, x.options());
    const int64_t N = rgb.N, C = rgb.C, H = rgb.H, W = rgb.W;
    const float* xd = x.data_ptr<float>();
    const int64_t chunks = (H + rgb.rows - 1) / rgb.rows;
    at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
        RgbOutput::Scratch scratch = rgb.scratch();
        for (int64_t i = begin; i < end; ++i) {
            const int64_t n = i / chunks;
            const int y0 = (int)((i % chunks) * rgb.rows), y1 = (int)std::min<int64_t>(H, y0 + rgb.rows);
            rgb.run(xd + n * C * H * W, n, y0, y1, scratch);
        }
    });
    return rgb.out;
}

// ---- Fully connected layers at inference batch sizes (the mapping network and the layers' affines) ----
//
// y[m][o] = act(weight_gain * sum_i x[m][i] W[o][i] + bias_gain * b[o]) for a few rows m, act(v) =
// act_gain * (v > 0 ? v : alpha * v). A GEMM library packs W before multiplying, which with 1-8 rows costs
// more than the product itself, and more still when W comes from memory (as it does between the layers of
// a generator); here W is read once, row by row, against rows of x that stay in L1.
constexpr int64_t MAX_LINEAR_ROWS = 16;

template <int M>
void linear_rows(const float* x, const float* w, int64_t I, float* dots) {
    vec acc[M];
    for (int m = 0; m < M; ++m) acc[m] = vec{};
    int64_t i = 0;
    for (; i + VW <= I; i += VW) {
        // W usually comes from memory; the hardware prefetcher stops at page boundaries, so ask 16 KiB ahead.
        __builtin_prefetch(w + i + 4096);
        const vec wv = load<VW>(w + i);
        for (int m = 0; m < M; ++m) acc[m] += wv * load<VW>(x + m * I + i);
    }
    for (int m = 0; m < M; ++m) {
        float lanes[VW];
        store(lanes, acc[m]);
        float sum = 0.0f;
        for (int l = 0; l < VW; ++l) sum += lanes[l];
        for (int64_t j = i; j < I; ++j) sum += w[j] * x[m * I + j];
        dots[m] = sum;
    }
}

torch::Tensor small_batch_linear(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, double weight_gain,
                                 double bias_gain, double alpha, double act_gain) {
    check_float_cpu(x, "x");
    check_float_cpu(weight, "weight");
    TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1), "x must be [M, I], weight [O, I]");
    const int64_t M = x.size(0), I = x.size(1), O = weight.size(0);
    TORCH_CHECK(M >= 1 && M <= MAX_LINEAR_ROWS, "at most ", MAX_LINEAR_ROWS, " rows");
    const bool has_bias = bias.numel() > 0;
    if (has_bias) {
        check_float_cpu(bias, "bias");
        TORCH_CHECK(bias.numel() == O, "bias must have O elements");
    }
    auto out = torch::empty({M, O}, x.options());
    const float* xd = x.data_ptr<float>();
    const float* wd = weight.data_ptr<float>();
    const float* bd = has_bias ? bias.data_ptr<float>() : nullptr;
    float* od = out.data_ptr<float>();
    at::parallel_for(0, O, 64, [&](int64_t begin, int64_t end) {
        float dots[MAX_LINEAR_ROWS];
        for (int64_t o = begin; o < end; ++o) {
            with_tile_size<MAX_LINEAR_ROWS>((int)M, [&](auto rows) {
                linear_rows<decltype(rows)::value>(xd, wd + o * I, I, dots);
            });
            const float b = has_bias ? (float)bias_gain * bd[o] : 0.0f;
            for (int64_t m = 0; m < M; ++m) {
                const float v = (float)weight_gain * dots[m] + b;
                od[m * O + o] = (float)act_gain * (v > 0 ? v : (float)alpha * v);
            }
        }
    });
    return out;
}

// small_batch_linear for several layers in one call: layer i takes xs[i] or, with chain, the previous layer's
// output (xs then holds only the first input). Returns every layer's output. One call instead of one per
// layer: from Python each call costs more than these products (measured: 20-50 us, most of it cache misses).
std::vector<torch::Tensor> small_batch_linears(std::vector<torch::Tensor> xs, std::vector<torch::Tensor> weights,
                                               std::vector<torch::Tensor> biases, std::vector<double> weight_gains,
                                               std::vector<double> bias_gains, std::vector<double> alphas,
                                               std::vector<double> act_gains, bool chain) {
    const size_t count = weights.size();
    TORCH_CHECK(biases.size() == count && weight_gains.size() == count && bias_gains.size() == count &&
                alphas.size() == count && act_gains.size() == count && xs.size() == (chain ? 1 : count),
                "one weight, bias, gain pair, slope and activation gain per layer, and one input per layer "
                "(chain: the first layer's)");
    std::vector<torch::Tensor> out;
    out.reserve(count);
    for (size_t i = 0; i < count; ++i) {
        const torch::Tensor& x = chain ? (i == 0 ? xs[0] : out.back()) : xs[i];
        out.push_back(small_batch_linear(x.contiguous(), weights[i], biases[i], weight_gains[i], bias_gains[i],
                                         alphas[i], act_gains[i]));
    }
    return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("conv3x3_lrelu", &conv3x3_lrelu, "3x3 convolution with per-sample weights and fused epilogue");
    m.def("up3x3_fir_lrelu", &up3x3_fir_lrelu, "upsampling 3x3 layer: transposed convolution, FIR and epilogue");
    m.def("conv3x3_lrelu_rgb", &conv3x3_lrelu_rgb, "conv3x3_lrelu followed by rgb_skip on its output, fused");
    m.def("rgb_skip", &rgb_skip, "toRGB 1x1 modulated convolution plus the upsampled skip image");
    m.def("small_batch_linear", &small_batch_linear, "fully connected layer for a few rows");
    m.def("small_batch_linears", &small_batch_linears, "several fully connected layers for a few rows, one call");
    m.def("vector_width", []() { return VW; }, "floats per vector in this build");
    m.def("cached_bytes", []() { return (int64_t)BufferCache::instance().cached_bytes(); },
          "bytes of released output buffers kept for reuse");
    m.def("clear_cache", []() { BufferCache::instance().clear(); }, "free the cached output buffers");
    m.def("set_cache_limit", [](int64_t bytes) { BufferCache::instance().set_limit((size_t)bytes); },
          "most bytes of released output buffers to keep (empties the cache)");
}
