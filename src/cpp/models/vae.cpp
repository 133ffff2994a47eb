// vae.cpp: AutoencoderOobleck decoder and encoder as GGML graphs, tiled along time.
//
// Layout: activations are ggml [C, T] (channel innermost).  A convolution is
// im2col into [K*C, T_out] followed by a matmul against the kernel flattened to
// [K*C, C_out] with the same (k, c) order, which yields [C_out, T_out] again.  A
// transposed convolution is one matmul into columns [K*C_out, T_in] and an
// overlap-add (col2im) of those columns.  The residual units' 7-tap convolutions,
// most of the work, run as Winograd F(4, 7) instead.  Snake, im2col, col2im, the
// Winograd transforms and the residual add are small fused CPU kernels (ggml custom
// ops, vae_kernels.h): each is one pass over memory where a chain of stock
// element-wise ops would be five.
//
// Only the CPU backend runs custom ops, so on any other device (CUDA, Vulkan, Metal)
// the VAE is built from stock ops, chosen by ggml_backend_supports_op: activations
// time-innermost [T, C] as ggml's convolutions take them, snake as mul/sin/sqr/mul/add,
// a convolution as ggml_im2col + one matmul (cols x kernel -> [T_out, C_out]), a
// transposed one as a matmul into columns + ggml_col2im_1d, the residual units' convs
// plainly (no Winograd).
#include "models/vae.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>

#include "core/env.h"
#include "core/error.h"
#include "core/format.h"
#include "core/graph.h"
#include "core/hparams.h"
#include "core/types.h"
#include "core/weights.h"
#include "models/vae_kernels.h"

namespace ace {

// ---------------------------------------------------------------------------
// The module tree, named like diffusers' so that each member's GGUF name is its path.

namespace {

struct Snake {
    ggml_tensor *alpha = nullptr, *inv_beta = nullptr;  // exp(log alpha), 1 / (exp(log beta) + 1e-9)
};

struct Conv {
    ggml_tensor *w = nullptr, *b = nullptr;  // w: [K*C_in, C_out] (conv) or [C_in, K*C_out] (transposed)
    int c_in = 0, c_out = 0;
    ConvGeom geom{};
    // Stock ops on a device that cannot hold all of w as one tensor: w's rows as separate
    // tensors (Backend::row_pieces), multiplied one by one; w is then the first of them.
    std::vector<ggml_tensor *> parts;
};

struct ResUnit {
    Snake snake1, snake2;
    Conv conv1, conv2;
    ggml_tensor *wino = nullptr;  // conv1 as Winograd matrices U [n, C_out, C_in]
};

struct DecoderBlock {
    Snake snake1;
    Conv conv_t1;
    ResUnit res[3];
};

struct EncoderBlock {
    ResUnit res[3];
    Snake snake1;
    Conv conv1;
};

struct Decoder {
    Conv conv1;
    std::vector<DecoderBlock> block;
    Snake snake1;
    Conv conv2;
};

struct Encoder {
    Conv conv1;
    std::vector<EncoderBlock> block;
    Snake snake1;
    Conv conv2;
};

// The decoder's tail, run in pieces inside a tile (Builder::decoder): its last kTailBlocks
// blocks and the output conv.  Measured on the real model (BF16 file), compute buffer per
// frame of tile (152 to 1036 frames, pieces of 16 or 32): 7.7 MB whole, 3.9 MB with the last
// block in pieces, 1.9 MB with two, 0.96 MB with three, where the fourth-last block's own
// activations set the peak.  A piece's context costs about 1% of the tail's work at 32 frames.
constexpr size_t kTailBlocks = 3;
// Pieces per tile at most: about 70 graph nodes each (stock ops: 220), within Graph's 16384.
constexpr int64_t kMaxPieces = 64;

size_t tail_start(const Decoder &d) { return d.block.size() - std::min(d.block.size(), kTailBlocks); }

// Output samples of the tail per input sample: a transposed conv of stride s with kernel 2s and
// padding ceil(s / 2) makes exactly s outputs per input for the even ratios read_vae_hparams allows.
int64_t tail_upsampling(const Decoder &d, size_t first) {
    int64_t up = 1;
    for (size_t i = first; i < d.block.size(); i++) up *= d.block[i].conv_t1.geom.stride;
    return up;
}

// Input samples on either side of a piece that the tail's output over the piece reads,
// walked back from the output: each conv reaches (kernel - 1) / 2 * dilation samples at its
// own rate; output u of a transposed conv reads inputs (u + padding - kernel) / stride
// .. (u + padding) / stride, bounded here by (reach + kernel + padding) / stride + 1.
int64_t tail_halo(const Decoder &d, size_t first) {
    auto reach = [](const Conv &c) { return (int64_t)(c.geom.kernel - 1) / 2 * c.geom.dilation; };
    int64_t r = reach(d.conv2);
    for (size_t i = d.block.size(); i-- > first;) {
        const DecoderBlock &b = d.block[i];
        for (const ResUnit &u : b.res) r += reach(u.conv1) + reach(u.conv2);
        const ConvGeom &g = b.conv_t1.geom;
        r = (r + g.kernel + g.padding) / g.stride + 1;
    }
    return r;
}

// The encoder's head, run in pieces inside a tile (Builder::encoder): its input conv and first
// kHeadBlocks blocks, the decoder's tail mirrored.  Their 128 to 512 channels at 48 to 1.5 kHz
// hold most of the encoder's activations (a 30 s tile in one pass took a 4.9 GiB compute buffer
// with the real model); with four blocks here a 30 s encode peaks below its decode (docs/benchmarks.md).
constexpr size_t kHeadBlocks = 4;

size_t head_end(const Encoder &e) { return std::min(e.block.size(), kHeadBlocks); }

// Input samples per output sample of the head: each strided conv (kernel 2s, padding s / 2,
// even s) makes floor(T_in / s) outputs, so a piece starting at a multiple of the product
// lines up with the whole pass.
int64_t head_downsampling(const Encoder &e, size_t end) {
    int64_t down = 1;
    for (size_t i = 0; i < end; i++) down *= e.block[i].conv1.geom.stride;
    return down;
}

// Head output samples at either end of a piece that can differ from the whole pass's (its
// convs read zeros there where the whole pass reads neighbours), walked forward from the
// input: each conv widens the span by (kernel - 1) / 2 * dilation samples at its own rate; the
// strided conv's output j reads inputs j * stride - padding .. j * stride - padding + kernel - 1,
// so a span of r inputs spoils at most (r + kernel + padding) / stride + 1 outputs.
int64_t head_halo(const Encoder &e, size_t end) {
    auto reach = [](const Conv &c) { return (int64_t)(c.geom.kernel - 1) / 2 * c.geom.dilation; };
    int64_t r = reach(e.conv1);
    for (size_t i = 0; i < end; i++) {
        const EncoderBlock &b = e.block[i];
        for (const ResUnit &u : b.res) r += reach(u.conv1) + reach(u.conv2);
        const ConvGeom &g = b.conv1.geom;
        r = (r + g.kernel + g.padding) / g.stride + 1;
    }
    return r;
}

// Unit axes are not significant: ggml drops trailing ones ([1, C, 1] reads back as [C, 1]).
void check(const GGUFFile &file, const std::string &name, const std::vector<int64_t> &shape) {
    auto squeeze = [](const std::vector<int64_t> &s) {
        std::vector<int64_t> out;
        for (auto d : s)
            if (d != 1) out.push_back(d);
        return out;
    };
    const TensorInfo &t = file.require(name);
    if (squeeze(t.torch_shape()) != squeeze(shape))
        throw FileError(fmt("%s: tensor '%s' has shape %s, expected %s", file.path().c_str(), name.c_str(),
                            shape_str(t.torch_shape()).c_str(), shape_str(shape).c_str()));
}

std::vector<float> values(const GGUFFile &file, const std::string &name, const std::vector<int64_t> &shape) {
    check(file, name, shape);
    return file.read_f32(name);
}

// The kernel with weight norm folded in: w = g * v / ||v||, the norm taken over
// all axes but the first, which is C_out for Conv1d and C_in for ConvTranspose1d
// (torch's weight_norm uses dim 0 either way).  Files with the plain `.weight`
// are taken as they are.
std::vector<float> folded(const GGUFFile &file, const std::string &p, const std::vector<int64_t> &shape, int rows) {
    if (file.find(p + ".weight")) return values(file, p + ".weight", shape);
    auto v = values(file, p + ".weight_v", shape);
    auto g = values(file, p + ".weight_g", {rows, 1, 1});
    const size_t per = v.size() / rows;
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (size_t i = 0; i < per; i++) ss += (double)v[r * per + i] * v[r * per + i];
        const float scale = ss > 0 ? (float)(g[r] / std::sqrt(ss)) : 0.0f;
        for (size_t i = 0; i < per; i++) v[r * per + i] *= scale;
    }
    return v;
}


// Declares a module tree's tensors in one Weights object.
class Loader {
  public:
    // The derived tensors are computed in Weights::load(), after the Loader is gone:
    // their lambdas hold the file, never the Loader.
    Loader(Weights &w, std::shared_ptr<GGUFFile> file, ggml_type compute, bool fused)
        : w_(w), file_(std::move(file)), compute_(compute), fused_(fused) {}

    Snake snake(const std::string &p, int C) {
        Snake s;
        s.alpha = w_.derived(p + ".alpha", GGML_TYPE_F32, per_channel(C), [f = file_, p, C] {
            auto v = values(*f, p + ".alpha", {1, C, 1});
            for (auto &x : v) x = std::exp(x);
            return v;
        });
        s.inv_beta = w_.derived(p + ".beta", GGML_TYPE_F32, per_channel(C), [f = file_, p, C] {
            auto v = values(*f, p + ".beta", {1, C, 1});
            for (auto &x : v) x = 1.0f / (std::exp(x) + 1e-9f);
            return v;
        });
        return s;
    }

    Conv conv(const std::string &p, int c_in, int c_out, ConvGeom g, bool bias = true) {
        Conv c{nullptr, nullptr, c_in, c_out, g, {}};
        const int K = g.kernel;
        if (!fused_) {  // PyTorch's (c, k) order is ggml_im2col's
            c.parts = rows_in_parts(p + ".weight", c_out, (int64_t)c_in * K, /*w_first=*/false, compute_,
                                    [f = file_, p, c_in, c_out, K] { return folded(*f, p, {c_out, c_in, K}, c_out); });
            c.w = c.parts[0];
            if (bias) c.b = w_.get(p + ".bias", per_channel(c_out), Store::F32);
            return c;
        }
        c.w = w_.derived(p + ".weight", compute_, {c_out, (int64_t)K * c_in}, [f = file_, p, c_in, c_out, K] {
            auto w = folded(*f, p, {c_out, c_in, K}, c_out);
            std::vector<float> out(w.size());
            for (int o = 0; o < c_out; o++)
                for (int i = 0; i < c_in; i++)
                    for (int k = 0; k < K; k++)
                        out[((size_t)o * K + k) * c_in + i] = w[((size_t)o * c_in + i) * K + k];
            return out;
        });
        if (bias) c.b = w_.get(p + ".bias", {c_out}, Store::F32);
        return c;
    }

    // Columns [K*C_out, T_in] of the matmul: k-major for our col2im, (o, k) order for ggml_col2im_1d.
    Conv conv_transposed(const std::string &p, int c_in, int c_out, ConvGeom g) {
        Conv c{nullptr, nullptr, c_in, c_out, g, {}};
        const int K = g.kernel;
        auto weight = [f = file_, p, c_in, c_out, K, fused = fused_] {
            auto w = folded(*f, p, {c_in, c_out, K}, c_in);
            std::vector<float> out(w.size());
            for (int i = 0; i < c_in; i++)
                for (int o = 0; o < c_out; o++)
                    for (int k = 0; k < K; k++) {
                        const size_t row = fused ? (size_t)k * c_out + o : (size_t)o * K + k;
                        out[row * c_in + i] = w[((size_t)i * c_out + o) * K + k];
                    }
            return out;
        };
        if (fused_)
            c.w = w_.derived(p + ".weight", compute_, {(int64_t)K * c_out, c_in}, weight);
        else
            c.w = (c.parts = rows_in_parts(p + ".weight", (int64_t)K * c_out, c_in, /*w_first=*/true, GGML_TYPE_F32, weight))[0];
        c.b = w_.get(p + ".bias", per_channel(c_out), Store::F32);
        return c;
    }

    // A matmul weight [rows, cols] (PyTorch order) as one tensor, or cut into row ranges of
    // their own where the device cannot hold it whole (Backend::row_pieces).
    std::vector<ggml_tensor *> rows_in_parts(const std::string &name, int64_t rows, int64_t cols, bool w_first,
                                             ggml_type other, std::function<std::vector<float>()> weight) {
        const int n = w_.backend()->row_pieces(compute_, cols, rows, w_first, other);
        if (n == 1) return {w_.derived(name, compute_, {rows, cols}, std::move(weight))};
        // The whole weight is computed once, by the first part Weights::load() fills, and
        // released after the last one has taken its rows.
        auto all = std::make_shared<std::vector<float>>();
        std::vector<ggml_tensor *> parts;
        const int64_t step = (rows + n - 1) / n;
        for (int64_t r = 0; r < rows; r += step) {
            const int64_t m = std::min(step, rows - r);
            const bool last = r + m == rows;
            parts.push_back(w_.derived(name + "." + std::to_string(parts.size()), compute_, {m, cols},
                                       [weight, all, r, m, cols, last] {
                                           if (all->empty()) *all = weight();
                                           std::vector<float> part(all->begin() + r * cols, all->begin() + (r + m) * cols);
                                           if (last) std::vector<float>().swap(*all);
                                           return part;
                                       }));
        }
        return parts;
    }

    // U_a = sum_k G[a, k] w[:, :, k], from the folded kernel.
    ggml_tensor *winograd_kernel(const std::string &p, int C) {
        const Winograd &wg = winograd();
        return w_.derived(p + ".wino", GGML_TYPE_F32, {wg.n, C, C}, [f = file_, p, C, &wg] {
            auto w = folded(*f, p, {C, C, 7}, C);
            std::vector<float> u((size_t)wg.n * C * C, 0.0f);
            for (int a = 0; a < wg.n; a++)
                for (int o = 0; o < C; o++)
                    for (int i = 0; i < C; i++) {
                        double acc = 0;
                        for (int k = 0; k < 7; k++) acc += (double)wg.G[(size_t)a * 7 + k] * w[((size_t)o * C + i) * 7 + k];
                        u[((size_t)a * C + o) * C + i] = (float)acc;
                    }
            return u;
        });
    }

    ResUnit res_unit(const std::string &p, int C, int dilation) {
        ResUnit r;
        r.snake1 = snake(p + ".snake1", C);
        const ConvGeom g1{7, 1, dilation, 3 * dilation};
        if (fused_) {
            // conv1 runs as Winograd: only its bias and geometry are kept besides U
            r.conv1 = Conv{nullptr, w_.get(p + ".conv1.bias", {C}, Store::F32), C, C, g1, {}};
            r.wino = winograd_kernel(p + ".conv1", C);
        } else {
            r.conv1 = conv(p + ".conv1", C, C, g1);
        }
        r.snake2 = snake(p + ".snake2", C);
        r.conv2 = conv(p + ".conv2", C, C, {1, 1, 1, 0});
        return r;
    }

  private:
    // Per-channel vectors: [C] for the fused kernels, [1, C] to broadcast over [T, C] in stock ops.
    std::vector<int64_t> per_channel(int C) const {
        return fused_ ? std::vector<int64_t>{C} : std::vector<int64_t>{C, 1};
    }

    Weights &w_;
    std::shared_ptr<GGUFFile> file_;
    ggml_type compute_;
    bool fused_;
};

}  // namespace

struct VAE::Model {
    std::shared_ptr<Backend> backend;
    std::shared_ptr<GGUFFile> file;
    ggml_type compute = GGML_TYPE_F32;
    bool fused = true;  // the fused CPU kernels, else stock ops (see the top of this file)
    std::unique_ptr<Weights> dec_w, enc_w;  // the encoder's are loaded on first use
    bool enc_loaded = false;
    int64_t device_chunk = 0, device_sub_chunk = 0;  // measured on first use, for that sub_chunk
    Decoder dec;
    Encoder enc;
    std::unique_ptr<Runner> runner;
};

// ---------------------------------------------------------------------------
// Graph building

namespace {

class Builder {
  public:
    Builder(Graph &g, const Backend &device, ggml_type compute, bool fused)
        : ctx_(g.ctx()), device_(device), compute_(compute), fused_(fused) {}

    // Fused: x [C, T] F32 -> snake(x (+ bias)) in the compute type.  Stock: x [T, C] F32 -> F32.
    ggml_tensor *snake(ggml_tensor *x, const Snake &s, ggml_tensor *bias = nullptr) {
        if (!fused_) {
            ggml_tensor *sine = ggml_sin(ctx_, ggml_mul(ctx_, x, s.alpha));
            return ggml_add(ctx_, x, ggml_mul(ctx_, ggml_sqr(ctx_, sine), s.inv_beta));
        }
        ggml_tensor *args[4] = {x, s.alpha, s.inv_beta, bias};
        return ggml_custom_4d(ctx_, compute_, x->ne[0], x->ne[1], 1, 1, args, bias ? 4 : 3, snake_kernel,
                              GGML_N_TASKS_MAX, nullptr);
    }

    // Fused: x [C_in, T] (compute type or F32) -> [C_out, T_out] F32, bias not yet added.
    // Stock: x [T, C_in] F32 -> [T_out, C_out] F32.
    ggml_tensor *conv_nobias(ggml_tensor *x, const Conv &c) {
        const ConvGeom &g = c.geom;
        if (!fused_) {
            // im2col reads only the kernel's shape (K, C_in): one output channel's view of w
            ggml_tensor *shape = ggml_view_2d(ctx_, c.w, g.kernel, c.c_in, g.kernel * ggml_element_size(c.w), 0);
            ggml_tensor *cols = ggml_im2col(ctx_, shape, x, g.stride, 0, g.padding, 0, g.dilation, 0, false, compute_);
            // [C_in*K, T_out] x [C_in*K, C_out] -> [T_out, C_out]; columns too large for the
            // device to bind at once are multiplied in time slices, joined along time
            const int64_t T_out = cols->ne[1];
            const int n = device_.row_pieces(cols->type, cols->ne[0], T_out, /*w_first=*/true, c.w->type);
            if (n == 1) return mul_mat_pieces(c, cols, /*w_first=*/false);
            std::vector<ggml_tensor *> ys;
            for (int64_t t = 0, step = (T_out + n - 1) / n; t < T_out; t += step) {
                ggml_tensor *part = ggml_view_2d(ctx_, cols, cols->ne[0], std::min(step, T_out - t), cols->nb[1], t * cols->nb[1]);
                ys.push_back(mul_mat_pieces(c, part, /*w_first=*/false));
            }
            return join(std::move(ys), 0);
        }
        ggml_tensor *cols = x;
        if (g.kernel != 1 || g.stride != 1 || g.padding != 0 || x->type != compute_) {
            const int64_t T_out = (x->ne[1] + 2 * g.padding - (int64_t)g.dilation * (g.kernel - 1) - 1) / g.stride + 1;
            cols = im2col(x, g, T_out);
        }
        return ggml_mul_mat(ctx_, c.w, cols);
    }

    // Stock ops: w times x (w_first) or x times w, part by part where w is cut into row ranges
    // (Conv::parts), their outputs joined in row order.
    ggml_tensor *mul_mat_pieces(const Conv &c, ggml_tensor *x, bool w_first) {
        std::vector<ggml_tensor *> ys;
        for (ggml_tensor *w : c.parts) ys.push_back(w_first ? ggml_mul_mat(ctx_, w, x) : ggml_mul_mat(ctx_, x, w));
        return join(std::move(ys), w_first ? 0 : 1);
    }

    // Tensors concatenated in order along dim, pairwise: each value is copied log2(n) times,
    // not once per later tensor.
    ggml_tensor *join(std::vector<ggml_tensor *> xs, int dim) {
        while (xs.size() > 1) {
            std::vector<ggml_tensor *> joined;
            for (size_t i = 0; i + 1 < xs.size(); i += 2) joined.push_back(ggml_concat(ctx_, xs[i], xs[i + 1], dim));
            if (xs.size() % 2) joined.push_back(xs.back());
            xs.swap(joined);
        }
        return xs[0];
    }

    ggml_tensor *conv(ggml_tensor *x, const Conv &c) {
        ggml_tensor *y = conv_nobias(x, c);
        return c.b ? ggml_add(ctx_, y, c.b) : y;
    }

    // Fused: x [C_in, T_in] compute type -> [C_out, (T_in-1)*stride + K - 2*padding] F32.
    // Stock: x [T_in, C_in] F32 -> [T_out, C_out] F32.
    ggml_tensor *conv_transposed(ggml_tensor *x, const Conv &c) {
        const ConvGeom &g = c.geom;
        if (!fused_) {
            ggml_tensor *cols = mul_mat_pieces(c, ggml_cont(ctx_, ggml_transpose(ctx_, x)), /*w_first=*/true);  // [C_out*K, T_in]
            return ggml_add(ctx_, ggml_col2im_1d(ctx_, cols, g.stride, c.c_out, g.padding), c.b);
        }
        ggml_tensor *cols = ggml_mul_mat(ctx_, c.w, x);  // [K*C_out, T_in]
        const int64_t T_out = (x->ne[1] - 1) * g.stride + g.kernel - 2 * g.padding;
        ggml_tensor *args[2] = {cols, c.b};
        return ggml_custom_4d(ctx_, GGML_TYPE_F32, c.c_out, T_out, 1, 1, args, 2, col2im_kernel, GGML_N_TASKS_MAX,
                              geom(g));
    }

    // x: [C, T] F32 -> [C, T] F32 (stock: [T, C])
    ggml_tensor *res_unit(ggml_tensor *x, const ResUnit &r) {
        if (!fused_) {
            ggml_tensor *y = conv(snake(conv(snake(x, r.snake1), r.conv1), r.snake2), r.conv2);
            return ggml_add(ctx_, x, y);
        }
        const Winograd &wg = winograd();
        const int d = r.conv1.geom.dilation;
        const int64_t C = x->ne[0], T = x->ne[1], n_tiles = (T + (int64_t)wg.m * d - 1) / ((int64_t)wg.m * d) * d;
        wgeoms_.push_back({&wg, d});
        void *ud = &wgeoms_.back();
        ggml_tensor *h = snake(x, r.snake1);
        ggml_tensor *in_args[1] = {h};
        ggml_tensor *v = ggml_custom_4d(ctx_, GGML_TYPE_F32, C, n_tiles, wg.n, 1, in_args, 1, wino_in_kernel,
                                        GGML_N_TASKS_MAX, ud);                       // [C, n_tiles, n]
        ggml_tensor *m = ggml_mul_mat(ctx_, r.wino, v);                              // [C, n_tiles, n]
        ggml_tensor *out_args[4] = {m, r.conv1.b, r.snake2.alpha, r.snake2.inv_beta};
        ggml_tensor *s2 = ggml_custom_4d(ctx_, compute_, C, T, 1, 1, out_args, 4, wino_out_snake_kernel,
                                         GGML_N_TASKS_MAX, ud);                      // [C, T]
        ggml_tensor *z = conv_nobias(s2, r.conv2);
        ggml_tensor *args[3] = {z, r.conv2.b, x};
        return ggml_custom_4d(ctx_, GGML_TYPE_F32, x->ne[0], x->ne[1], 1, 1, args, 3, residual_kernel,
                              GGML_N_TASKS_MAX, nullptr);
    }

    // latents [latent_channels, T] -> audio [audio_channels, T * hop].
    // The tail (the last kTailBlocks blocks and the output conv) holds the largest activations
    // (256 and 128 channels at 12 to 48 kHz), so it runs on pieces of sub_chunk latent frames
    // (0: the whole tile at once), each widened by the halo its receptive field reads
    // (tail_halo).  The pieces' intermediates then exist one piece at a time: ggml's allocator
    // reuses them, since each piece is computed before the next one starts.
    ggml_tensor *decoder(ggml_tensor *z, const Decoder &d, int64_t sub_chunk) {
        const size_t first = tail_start(d);
        ggml_tensor *x = conv(to_layout(z), d.conv1);
        for (size_t i = 0; i < first; i++) x = block(x, d.block[i]);
        const int64_t n = frames(x);
        if (sub_chunk <= 0 || sub_chunk >= z->ne[1]) return tail(x, d, first);
        // in samples of x; at most kMaxPieces pieces, so that the graph's node count stays bounded
        const int64_t per = std::max(sub_chunk * (n / z->ne[1]), (n + kMaxPieces - 1) / kMaxPieces);
        const int64_t halo = tail_halo(d, first), up = tail_upsampling(d, first);
        std::vector<ggml_tensor *> pieces;
        for (int64_t c0 = 0; c0 < n; c0 += per) {
            const int64_t c1 = std::min(n, c0 + per), a = std::max<int64_t>(0, c0 - halo), b = std::min(n, c1 + halo);
            ggml_tensor *y = tail(time_slice(x, a, b), d, first);  // [A, (b - a) * up]
            pieces.push_back(ggml_view_2d(ctx_, y, y->ne[0], (c1 - c0) * up, y->nb[1], (c0 - a) * up * y->nb[1]));
        }
        return join(std::move(pieces), 1);
    }

    // audio [audio_channels, N] -> [2 * latent_channels, N / hop].
    // The head (the input conv and the first kHeadBlocks blocks) holds the largest activations,
    // so it runs on pieces of sub_chunk latent frames of audio (0: the whole tile at once), each
    // widened by head_halo output samples either side; a piece starts at a multiple of the
    // head's downsampling, so its samples line up with the whole pass's.  As in the decoder,
    // ggml's allocator reuses one piece's intermediates for the next.
    ggml_tensor *encoder(ggml_tensor *a, const Encoder &e, int64_t sub_chunk, int64_t hop) {
        const size_t end = head_end(e);
        const int64_t N = a->ne[1], down = head_downsampling(e, end), n = N / down;  // a: [A, N]
        ggml_tensor *x;
        if (sub_chunk <= 0 || sub_chunk * hop >= N) {
            x = head(to_layout(a), e, end);
        } else {
            // in head output samples; at most kMaxPieces pieces, so that the node count stays bounded
            const int64_t per = std::max(sub_chunk * (hop / down), (n + kMaxPieces - 1) / kMaxPieces);
            const int64_t halo = head_halo(e, end);
            std::vector<ggml_tensor *> pieces;
            for (int64_t c0 = 0; c0 < n; c0 += per) {
                const int64_t c1 = std::min(n, c0 + per), p0 = std::max<int64_t>(0, c0 - halo);
                const int64_t p1 = std::min(n, c1 + halo);
                // the last piece takes the samples past the last whole output sample too, as the
                // whole pass sees them
                const int64_t s0 = p0 * down, s1 = p1 == n ? N : p1 * down;
                ggml_tensor *y = head(to_layout(ggml_view_2d(ctx_, a, a->ne[0], s1 - s0, a->nb[1], s0 * a->nb[1])),
                                      e, end);  // [C, p1 - p0] (stock: [p1 - p0, C])
                pieces.push_back(time_slice(y, c0 - p0, c1 - p0));
            }
            x = join(std::move(pieces), fused_ ? 1 : 0);
        }
        for (size_t i = end; i < e.block.size(); i++) x = block(x, e.block[i]);
        return to_layout(conv(snake(x, e.snake1), e.conv2));
    }

  private:
    // x [C_in, T] -> [C_out, T * stride] (stock: [T, C])
    ggml_tensor *block(ggml_tensor *x, const DecoderBlock &b) {
        x = conv_transposed(snake(x, b.snake1), b.conv_t1);
        for (const auto &r : b.res) x = res_unit(x, r);
        return x;
    }

    // x [C_in, T] -> [C_out, T / stride] (stock: [T, C])
    ggml_tensor *block(ggml_tensor *x, const EncoderBlock &b) {
        for (const auto &r : b.res) x = res_unit(x, r);
        return conv(snake(x, b.snake1), b.conv1);
    }

    // The input conv and blocks ..end: audio x [A, N] (stock: [N, A]) -> [C, N / down]
    ggml_tensor *head(ggml_tensor *x, const Encoder &e, size_t end) {
        x = conv(x, e.conv1);
        for (size_t i = 0; i < end; i++) x = block(x, e.block[i]);
        return x;
    }

    // Blocks first.. and the output conv: x [C, n] (stock: [n, C]) -> audio [A, n * up]
    ggml_tensor *tail(ggml_tensor *x, const Decoder &d, size_t first) {
        for (size_t i = first; i < d.block.size(); i++) x = block(x, d.block[i]);
        return to_layout(conv(snake(x, d.snake1), d.conv2));
    }

    // Inputs and outputs are [C, T]; the stock ops work on [T, C].
    ggml_tensor *to_layout(ggml_tensor *x) { return fused_ ? x : ggml_cont(ctx_, ggml_transpose(ctx_, x)); }
    int64_t frames(const ggml_tensor *x) const { return fused_ ? x->ne[1] : x->ne[0]; }
    // Frames [a, b) of x: rows of [C, T] are a view; a stock [T, C] slice is strided, so copied.
    ggml_tensor *time_slice(ggml_tensor *x, int64_t a, int64_t b) {
        if (fused_) return ggml_view_2d(ctx_, x, x->ne[0], b - a, x->nb[1], a * x->nb[1]);
        return ggml_cont(ctx_, ggml_view_2d(ctx_, x, b - a, x->ne[1], x->nb[1], a * x->nb[0]));
    }

    ggml_tensor *im2col(ggml_tensor *x, const ConvGeom &g, int64_t T_out) {
        ggml_tensor *args[1] = {x};
        return ggml_custom_4d(ctx_, compute_, x->ne[0] * g.kernel, T_out, 1, 1, args, 1, im2col_kernel,
                              GGML_N_TASKS_MAX, geom(g));
    }

    void *geom(const ConvGeom &g) {
        geoms_.push_back(g);
        return &geoms_.back();
    }

    ggml_context *ctx_;
    const Backend &device_;
    ggml_type compute_;
    bool fused_;
    // The custom ops point into these until the graph has run: a deque never moves them.
    std::deque<ConvGeom> geoms_;
    std::deque<WinoGeom> wgeoms_;
};

}  // namespace

// The fused kernels where the device runs ggml custom ops (the CPU), else stock ops, unless
// ACESTEP_GGML_VAE_OPS names one.
static bool runs_fused_kernels(const Backend &backend) {
    const env::VaeOps ops = env::vae_ops();
    if (ops != env::VaeOps::Auto) return ops == env::VaeOps::Fused;
    ggml_init_params p = {ggml_tensor_overhead() * 4, nullptr, /*no_alloc=*/true};
    ggml_context *ctx = ggml_init(p);
    ggml_tensor *args[1] = {ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 8, 8)};
    const bool ok = backend.supports(ggml_custom_4d(ctx, GGML_TYPE_F32, 8, 8, 1, 1, args, 1, snake_kernel, 1, nullptr));
    ggml_free(ctx);
    return ok;
}

// ---------------------------------------------------------------------------

VAE::VAE(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend)
    : hp_(read_vae_hparams(*file)), m_(new Model) {
    m_->backend = std::move(backend);
    m_->file = std::move(file);
    const GGUFFile &f = *m_->file;

    // F32 files compute in F32; BF16 and others in F16, which the CPU matmul
    // kernels take directly and which keeps bf16's 8-bit mantissa whole.
    const TensorInfo *probe = f.find("decoder.conv1.weight_v");
    if (!probe) probe = &f.require("decoder.conv1.weight");
    m_->compute = probe->type == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    m_->fused = runs_fused_kernels(*m_->backend);

    // Channel counts fit int: read_vae_hparams bounds them.
    const int n = (int)hp_.downsampling_ratios.size(), latent = (int)hp_.decoder_input_channels;
    const int audio = (int)hp_.audio_channels;
    const std::vector<int> ratios(hp_.downsampling_ratios.begin(), hp_.downsampling_ratios.end());
    std::vector<int> mult = {1};
    mult.insert(mult.end(), hp_.channel_multiples.begin(), hp_.channel_multiples.end());

    m_->dec_w = std::make_unique<Weights>(m_->file, m_->backend);
    {
        Loader L(*m_->dec_w, m_->file, m_->compute, m_->fused);
        Decoder &d = m_->dec;
        const int ch = (int)hp_.decoder_channels;
        d.conv1 = L.conv("decoder.conv1", latent, ch * mult[n], {7, 1, 1, 3});
        for (int i = 0; i < n; i++) {
            const int s = ratios[n - 1 - i], c_in = ch * mult[n - i], c_out = ch * mult[n - i - 1];
            const std::string p = "decoder.block." + std::to_string(i);
            DecoderBlock b;
            b.snake1 = L.snake(p + ".snake1", c_in);
            b.conv_t1 = L.conv_transposed(p + ".conv_t1", c_in, c_out, {2 * s, s, 1, (s + 1) / 2});
            for (int r = 0; r < 3; r++) b.res[r] = L.res_unit(p + ".res_unit" + std::to_string(r + 1), c_out, (int)std::pow(3, r));
            d.block.push_back(b);
        }
        d.snake1 = L.snake("decoder.snake1", ch);
        d.conv2 = L.conv("decoder.conv2", ch, audio, {7, 1, 1, 3}, /*bias=*/false);
    }
    m_->enc_w = std::make_unique<Weights>(m_->file, m_->backend);
    if (hp_.has_encoder) {
        Loader L(*m_->enc_w, m_->file, m_->compute, m_->fused);
        Encoder &e = m_->enc;
        const int ch = (int)hp_.encoder_hidden_size;
        e.conv1 = L.conv("encoder.conv1", audio, ch, {7, 1, 1, 3});
        for (int i = 0; i < n; i++) {
            const int s = ratios[i], c_in = ch * mult[i], c_out = ch * mult[i + 1];
            const std::string p = "encoder.block." + std::to_string(i);
            EncoderBlock b;
            for (int r = 0; r < 3; r++) b.res[r] = L.res_unit(p + ".res_unit" + std::to_string(r + 1), c_in, (int)std::pow(3, r));
            b.snake1 = L.snake(p + ".snake1", c_in);
            b.conv1 = L.conv(p + ".conv1", c_in, c_out, {2 * s, s, 1, (s + 1) / 2});
            e.block.push_back(b);
        }
        e.snake1 = L.snake("encoder.snake1", ch * mult[n]);
        e.conv2 = L.conv("encoder.conv2", ch * mult[n], ch, {3, 1, 1, 1});
    }
    m_->dec_w->load();
    m_->runner = std::make_unique<Runner>(m_->backend);
}

VAE::~VAE() = default;

int64_t VAE::default_chunk(int64_t cpu_chunk, int64_t sub_chunk) {
    if (m_->fused) return cpu_chunk;
    if (!m_->device_chunk || m_->device_sub_chunk != sub_chunk) {
        // A device tile holds as many frames as a quarter of the device's free memory, at
        // most 4 GiB (memory stays bounded, other models keep their room).  The compute
        // memory is a part that grows linearly with the frames plus the tail's pieces, whose
        // size does not grow with the tile: two graphs of several pieces measure both.
        auto bytes = [&](int64_t T) {
            Graph g;
            ggml_tensor *z = g.input("latents", GGML_TYPE_F32, {T, hp_.decoder_input_channels});
            g.output(Builder(g, *m_->backend, m_->compute, m_->fused).decoder(z, m_->dec, sub_chunk));
            m_->runner->alloc(g);
            return (double)m_->runner->compute_bytes();
        };
        const int64_t t1 = 2 * std::max<int64_t>(sub_chunk, 8), t2 = 2 * t1;
        const double b1 = bytes(t1), per_frame = std::max(1.0, (bytes(t2) - b1) / (t2 - t1));
        const double fixed = std::max(0.0, b1 - per_frame * t1);
        size_t free_bytes = 0, total_bytes = 0;
        ggml_backend_dev_memory(ggml_backend_get_device(m_->backend->primary()), &free_bytes, &total_bytes);
        const double budget = std::min(free_bytes / 4.0, 4.0 * (1 << 30));
        m_->device_chunk = std::clamp<int64_t>((int64_t)((budget - fixed) / per_frame), cpu_chunk, kMaxDeviceChunk);
        m_->device_sub_chunk = sub_chunk;
    }
    return m_->device_chunk;
}

std::string VAE::compute_type() const { return m_->compute == GGML_TYPE_F32 ? "f32" : "f16"; }

static void check_finite(const float *x, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!std::isfinite(x[i]))
            throw InputError(fmt("%s: NaN or infinity at flat index %zu", what, i));
}

// The windows of a tiled pass over n frames: [win0, win1) computed, [core0, core1) kept.
struct Window {
    int64_t win0, win1, core0, core1;
};

static std::vector<Window> windows(int64_t n, Tiling t) {
    if (t.chunk <= 0 || t.chunk >= n) return {{0, n, 0, n}};
    std::vector<Window> out;
    for (int64_t c0 = 0; c0 < n; c0 += t.chunk) {
        const int64_t c1 = std::min(n, c0 + t.chunk);
        out.push_back({std::max<int64_t>(0, c0 - t.overlap), std::min(n, c1 + t.overlap), c0, c1});
    }
    return out;
}

static void check_tiling(Tiling t) {
    if (t.chunk < 0) throw InputError(fmt("chunk must be >= 0 (0 = no tiling), got %lld", (long long)t.chunk));
    if (t.overlap < 0) throw InputError(fmt("overlap must be >= 0, got %lld", (long long)t.overlap));
    if (t.sub_chunk < 0)
        throw InputError(fmt("sub_chunk must be >= 0 (0 = whole tiles), got %lld", (long long)t.sub_chunk));
}

std::vector<float> VAE::decode(const float *latents, int64_t B, int64_t T, Tiling tiling,
                               const TileProgress &progress) {
    const int64_t C = hp_.decoder_input_channels, A = hp_.audio_channels, hop = hp_.hop_length;
    if (B < 1 || T < 1) throw InputError(fmt("latents are empty (batch %lld, %lld frames)", (long long)B, (long long)T));
    check_tiling(tiling);
    check_finite(latents, (size_t)(B * T * C), "latents");
    const int64_t N = T * hop;
    std::vector<float> audio((size_t)(B * A * N));
    const std::vector<Window> wins = windows(T, tiling);
    int64_t done = 0;
    for (int64_t b = 0; b < B; b++) {
        for (const Window &w : wins) {
            const int64_t Tw = w.win1 - w.win0;
            Graph g;
            ggml_tensor *z = g.input("latents", GGML_TYPE_F32, {Tw, C});
            Builder build(g, *m_->backend, m_->compute, m_->fused);
            ggml_tensor *y = build.decoder(z, m_->dec, tiling.sub_chunk);  // [A, Tw*hop]
            g.output(y);
            m_->runner->alloc(g);
            set_input(z, latents + (b * T + w.win0) * C, (size_t)(Tw * C));
            m_->runner->compute(g);
            std::vector<float> out = get_output(y);
            // [Tw*hop, A] time-major -> (A, N) channel-major, keeping the core only.
            const int64_t skip = (w.core0 - w.win0) * hop, len = (w.core1 - w.core0) * hop;
            for (int64_t a = 0; a < A; a++) {
                float *dst = audio.data() + (b * A + a) * N + w.core0 * hop;
                for (int64_t i = 0; i < len; i++) dst[i] = out[(skip + i) * A + a];
            }
            if (progress) progress(++done, B * (int64_t)wins.size());
        }
    }
    return audio;
}

void VAE::encode(const float *audio, int64_t B, int64_t N, Tiling tiling, std::vector<float> &mean,
                 std::vector<float> &stdev, const TileProgress &progress) {
    const int64_t A = hp_.audio_channels, L = hp_.decoder_input_channels, hop = hp_.hop_length;
    if (B < 1 || N < 1) throw InputError(fmt("audio is empty (batch %lld, %lld samples)", (long long)B, (long long)N));
    if (N < hop)
        throw InputError(fmt("audio has %lld samples, fewer than one latent frame (%lld samples)", (long long)N,
                             (long long)hop));
    if (m_->enc.block.empty())
        throw FileError(fmt("%s: this VAE file has no encoder weights (encoder.*)", m_->file->path().c_str()));
    check_tiling(tiling);
    check_finite(audio, (size_t)(B * A * N), "audio");
    if (!m_->enc_loaded) {
        m_->enc_w->load();
        m_->enc_loaded = true;
    }
    const int64_t T = N / hop;
    mean.assign((size_t)(B * T * L), 0.0f);
    stdev.assign((size_t)(B * T * L), 0.0f);
    std::vector<float> in;
    const std::vector<Window> wins = windows(T, tiling);
    int64_t done = 0;
    for (int64_t b = 0; b < B; b++) {
        for (const Window &w : wins) {
            // Windows are whole frames, except that the last one takes the samples
            // past the last whole frame as well, as the untiled pass sees them.
            const int64_t s0 = w.win0 * hop, s1 = w.win1 == T ? N : w.win1 * hop, Ns = s1 - s0;
            Graph g;
            ggml_tensor *a = g.input("audio", GGML_TYPE_F32, {Ns, A});
            Builder build(g, *m_->backend, m_->compute, m_->fused);
            ggml_tensor *h = build.encoder(a, m_->enc, tiling.sub_chunk, hop);  // [2L, Tw]
            g.output(h);
            m_->runner->alloc(g);
            in.resize((size_t)(Ns * A));
            for (int64_t i = 0; i < Ns; i++)
                for (int64_t c = 0; c < A; c++) in[i * A + c] = audio[(b * A + c) * N + s0 + i];
            set_input(a, in.data(), in.size());
            m_->runner->compute(g);
            std::vector<float> out = get_output(h);
            const int64_t Tw = h->ne[1];
            if (Tw != w.win1 - w.win0)
                throw Error(fmt("encoder produced %lld frames for a window of %lld", (long long)Tw,
                                 (long long)(w.win1 - w.win0)));
            for (int64_t t = w.core0; t < w.core1; t++) {
                const float *row = out.data() + (t - w.win0) * 2 * L;
                float *m = mean.data() + (b * T + t) * L, *s = stdev.data() + (b * T + t) * L;
                for (int64_t c = 0; c < L; c++) {
                    m[c] = row[c];
                    // softplus(x) = log1p(exp(x)), written to stay finite for large x
                    const float x = row[L + c];
                    s[c] = (x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x))) + 1e-4f;
                }
            }
            if (progress) progress(++done, B * (int64_t)wins.size());
        }
    }
    // An encode comes before the stages it conditions (a timbre reference, a source song): its
    // compute buffer is released rather than held through them.
    m_->runner = std::make_unique<Runner>(m_->backend);
}

}  // namespace ace
