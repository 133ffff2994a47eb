// vae.h: the Oobleck autoencoder (latents <-> 48 kHz stereo audio) of ACE-Step 1.5.
//
// Activations are kept time-major, ggml ne = [C, T] (PyTorch (T, C)): every
// convolution then is im2col + one matmul whose output already has that layout,
// so no tensor is ever transposed between layers.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/hparams.h"

namespace ace {

// Tiling along time: windows of `chunk` frames plus `overlap` frames of context on
// each side, whose centres are stitched together.  chunk <= 0 decodes in one pass.
// Inside a tile, the decoder's last blocks and output conv, and the encoder's input conv and
// first blocks, whose activations are the largest, run on pieces of `sub_chunk` frames
// (0: the whole tile at once).
struct Tiling {
    int64_t chunk = 0;
    int64_t overlap = 0;
    int64_t sub_chunk = 0;
};

class VAE {
  public:
    VAE(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend);
    ~VAE();

    const VAEHParams &hparams() const { return hp_; }
    // "f32" or "f16": the matmul weight and activation type, from the file's weights.
    std::string compute_type() const;

    // Frames per tile when the caller names none: cpu_chunk where the fused CPU kernels
    // run; on other devices as many as a quarter of the device's free memory holds
    // (at most 4 GiB, between cpu_chunk and kMaxDeviceChunk frames), decoding with sub_chunk.
    int64_t default_chunk(int64_t cpu_chunk, int64_t sub_chunk);
    static constexpr int64_t kMaxDeviceChunk = 4096;

    // Called after each tile with (tiles done, tiles in all, over the whole batch); it may
    // throw to stop the pass (a Ctrl-C seen by the Python binding).
    using TileProgress = std::function<void(int64_t, int64_t)>;

    // latents: (B, T, decoder_input_channels) -> audio (B, audio_channels, T * hop_length).
    std::vector<float> decode(const float *latents, int64_t B, int64_t T, Tiling tiling,
                              const TileProgress &progress = nullptr);
    // audio: (B, audio_channels, N) -> mean and std, each (B, N / hop_length, decoder_input_channels).
    void encode(const float *audio, int64_t B, int64_t N, Tiling tiling, std::vector<float> &mean,
                std::vector<float> &std, const TileProgress &progress = nullptr);

    struct Model;

  private:
    VAEHParams hp_;
    std::unique_ptr<Model> m_;
};

}  // namespace ace
