// py_hparams.cpp: the hyperparameters of each file kind as read-only Python objects
// (`_core.DiTHParams`, ...), `GGUFFile.hparams`, and the key table (`_core.hparam_keys`).
#include "core/hparams.h"
#include "python/bindings.h"

namespace ace {

py::object hparams_of(const GGUFFile &f) {
    const std::string arch = f.architecture();
    if (arch == "acestep-dit") return py::cast(read_dit_hparams(f));
    if (arch == "acestep-text-enc") return py::cast(read_text_enc_hparams(f));
    if (arch == "acestep-lm") return py::cast(read_lm_hparams(f));
    if (arch == "acestep-vae") return py::cast(read_vae_hparams(f));
    throw FileError(fmt("%s: no hyperparameters for general.architecture '%s'", f.path().c_str(),
                        arch.empty() ? "(missing)" : arch.c_str()));
}

// A value of the table's JSON defaults as Python sees it.
static py::object json_value(const char *json) {
    return py::module_::import("json").attr("loads")(json);
}

void bind_hparams(py::module_ &m) {
    using D = DiTHParams;
    py::class_<D>(m, "DiTHParams", "An acestep-dit file's hyperparameters (config.json's names).")
        .def_readonly("is_turbo", &D::is_turbo)
        .def_readonly("shift", &D::shift, "The sampler's timestep shift where config.json names one, else None.")
        .def_readonly("has_decoder", &D::has_decoder)
        .def_readonly("has_encoder", &D::has_encoder)
        .def_readonly("has_tokenizer", &D::has_tokenizer)
        .def_readonly("has_detokenizer", &D::has_detokenizer)
        .def_readonly("hidden_size", &D::hidden_size)
        .def_readonly("intermediate_size", &D::intermediate_size)
        .def_readonly("num_hidden_layers", &D::num_hidden_layers)
        .def_readonly("num_attention_heads", &D::num_attention_heads)
        .def_readonly("num_key_value_heads", &D::num_key_value_heads)
        .def_readonly("head_dim", &D::head_dim)
        .def_readonly("in_channels", &D::in_channels)
        .def_readonly("audio_acoustic_hidden_dim", &D::audio_acoustic_hidden_dim)
        .def_property_readonly("latent_channels", [](const D &h) { return h.audio_acoustic_hidden_dim; })
        .def_readonly("patch_size", &D::patch_size)
        .def_readonly("sliding_window", &D::sliding_window)
        .def_readonly("layer_types", &D::layer_types)
        .def_readonly("rms_norm_eps", &D::rms_norm_eps)
        .def_readonly("rope_theta", &D::rope_theta)
        .def_readonly("encoder_hidden_size", &D::encoder_hidden_size)
        .def_readonly("encoder_intermediate_size", &D::encoder_intermediate_size)
        .def_readonly("encoder_num_attention_heads", &D::encoder_num_attention_heads)
        .def_readonly("encoder_num_key_value_heads", &D::encoder_num_key_value_heads)
        .def_readonly("text_hidden_dim", &D::text_hidden_dim)
        .def_readonly("timbre_hidden_dim", &D::timbre_hidden_dim)
        .def_readonly("num_lyric_encoder_hidden_layers", &D::num_lyric_encoder_hidden_layers)
        .def_readonly("num_timbre_encoder_hidden_layers", &D::num_timbre_encoder_hidden_layers)
        .def_readonly("timbre_fix_frame", &D::timbre_fix_frame)
        .def_readonly("timbre_cls", &D::timbre_cls)
        .def_readonly("silence_frames", &D::silence_frames)
        .def_readonly("fsq_input_levels", &D::fsq_input_levels)
        .def_readonly("codebook_size", &D::codebook_size)
        .def_readonly("fsq_dim", &D::fsq_dim)
        .def_readonly("pool_window_size", &D::pool_window_size)
        .def_readonly("num_attention_pooler_hidden_layers", &D::num_attention_pooler_hidden_layers)
        .def_readonly("num_detokenizer_hidden_layers", &D::num_detokenizer_hidden_layers);

    using T = TextEncHParams;
    py::class_<T>(m, "TextEncHParams", "An acestep-text-enc file's hyperparameters (config.json's names).")
        .def_readonly("vocab_size", &T::vocab_size)
        .def_readonly("hidden_size", &T::hidden_size)
        .def_readonly("intermediate_size", &T::intermediate_size)
        .def_readonly("num_hidden_layers", &T::num_hidden_layers)
        .def_readonly("num_attention_heads", &T::num_attention_heads)
        .def_readonly("num_key_value_heads", &T::num_key_value_heads)
        .def_readonly("head_dim", &T::head_dim)
        .def_readonly("max_position_embeddings", &T::max_position_embeddings, "None where the file states none.")
        .def_readonly("rms_norm_eps", &T::rms_norm_eps)
        .def_readonly("rope_theta", &T::rope_theta);
    py::class_<LMHParams, T>(m, "LMHParams", "An acestep-lm file's hyperparameters (config.json's names).")
        .def_readonly("tie_word_embeddings", &LMHParams::tie_word_embeddings);

    using V = VAEHParams;
    py::class_<V>(m, "VAEHParams", "An acestep-vae file's hyperparameters (config.json's names).")
        .def_readonly("encoder_hidden_size", &V::encoder_hidden_size)
        .def_readonly("downsampling_ratios", &V::downsampling_ratios)
        .def_readonly("channel_multiples", &V::channel_multiples)
        .def_readonly("decoder_channels", &V::decoder_channels)
        .def_readonly("decoder_input_channels", &V::decoder_input_channels)
        .def_property_readonly("latent_channels", [](const V &h) { return h.decoder_input_channels; })
        .def_readonly("audio_channels", &V::audio_channels)
        .def_readonly("sampling_rate", &V::sampling_rate)
        .def_readonly("hop_length", &V::hop_length, "Audio samples per latent frame.")
        .def_property_readonly("latents_per_second",
                               [](const V &h) { return (double)h.sampling_rate / (double)h.hop_length; })
        .def_readonly("has_encoder", &V::has_encoder);

    m.def("hparam_keys", [](const std::string &architecture) {
        const KeyTable &t = hparam_keys(architecture);
        py::list out;
        for (const HParamKey *k : t) {
            const std::string gguf = t.gguf_key(*k);
            const char *fallback = k->fallback == Fallback::Default   ? "default"
                                   : k->fallback == Fallback::Derived ? "derived"
                                                                      : "absent";
            py::object value = k->fallback == Fallback::Default   ? json_value(k->value)
                               : k->fallback == Fallback::Derived ? py::object(py::str(k->value))
                                                                  : py::object(py::none());
            out.append(py::make_tuple(gguf.empty() ? py::object(py::none()) : py::object(py::str(gguf)),
                                      key_type_name(k->type),
                                      k->config ? py::object(py::str(k->config)) : py::object(py::none()),
                                      fallback, value));
        }
        return out;
    }, py::arg("architecture"),
       "The keys the core reads from a file of this architecture, in order: (GGUF key or None, type, config.json key "
       "or None, fallback, value), fallback 'default' (value: the default), 'derived' (value: from what) or 'absent'. "
       "The GGUF key wins over config.json's.");
}

}  // namespace ace
