"""The request and response bodies, as pydantic models: they validate every request before it is
queued and generate the OpenAPI spec (/openapi.json).

``AceRequest`` is acestep.cpp's request JSON (its ``request.h``), field for field, with its defaults:
a client of ace-server sends the same JSON here.  ``UpstreamTask`` is the body of upstream ACE-Step's
``/release_task`` (``acestep/api_server.py``), the names its clients use.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

MAX_TEXT = 20000  # characters of a caption or lyrics; generous, but bounded
MAX_CODES_TEXT = 3000 * 6  # 600 s of codes at 5 per second, comma-separated
MAX_SEED = 2**32 - 1  # the original draws seeds with random.randint(0, 2**32 - 1)

TaskType = Literal["text2music", "cover", "cover-nofsq", "repaint", "lego", "extract", "complete"]


class AceRequest(BaseModel):
    """One song request, as acestep.cpp's ace-server reads it; every field has acestep.cpp's default.
    Fields of features acestep-ggml lacks are accepted at their default and refused (400, naming the
    field) otherwise."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="AceRequest")

    caption: str = Field("", max_length=MAX_TEXT, description="what the music sounds like (required but for lego, "
                                                               "extract and complete)")
    lyrics: str = Field("", max_length=MAX_TEXT, description='lyrics; "[Instrumental]" for none')
    bpm: int = Field(0, ge=0, le=1000, description="beats per minute; 0: unset")
    duration: float = Field(0, ge=0, le=600, description="seconds; 0: unset (the LM chooses; synth: 120)")
    keyscale: str = Field("", max_length=32, description='e.g. "F# minor"; "": unset')
    timesignature: Union[str, int] = Field("", description='numerator, e.g. "4"; "": unset')
    vocal_language: str = Field("", max_length=16, description='language code, "unknown", or "": the LM chooses')
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="noise seed of the DiT; -1: random")
    lm_batch_size: int = Field(1, ge=1, le=9, description="LM variations (consecutive LM seeds)")
    synth_batch_size: int = Field(1, ge=1, le=9, description="DiT variations (consecutive seeds)")
    lm_temperature: float = Field(0.85, ge=0, le=10)
    lm_cfg_scale: float = Field(2.0, ge=0, le=100, description="LM guidance; 1 or less: none")
    lm_top_p: float = Field(0.9, gt=0, le=1)
    lm_top_k: int = Field(0, ge=0, le=1000000, description="0: off")
    lm_negative_prompt: str = Field("", max_length=MAX_TEXT, description='"": the default unconditional prompt')
    lm_seed: int = Field(-1, ge=-1, le=MAX_SEED, description="LM sampling seed; -1: random")
    use_cot_caption: bool = Field(True, description="the LM rewrites the caption in its chain of thought")
    audio_codes: str = Field("", max_length=MAX_CODES_TEXT, description="comma-separated LM codes 0..63999")
    inference_steps: int = Field(0, ge=0, le=1000, description="DiT steps; 0: the model's (turbo 8, base/SFT 32)")
    guidance_scale: float = Field(0.0, ge=0, le=100, description="DiT guidance; 0: the model's (turbo 1, base 7)")
    shift: float = Field(0.0, ge=0, le=100, description="timestep shift; 0: 3.0")
    dcw_scaler: float = Field(0.0, ge=0, le=100, description="DCW strength (low band; all bands in high and pix "
                                                              "modes); DCW is off while both scalers are 0")
    dcw_high_scaler: float = Field(0.0, ge=0, le=100, description="DCW strength of the high band in double mode")
    dcw_mode: Literal["low", "high", "double", "pix"] = Field("low", description="DCW's wavelet band(s)")
    audio_cover_strength: float = Field(1.0, ge=0, le=1, description="cover: fraction of steps that hear the source")
    cover_noise_strength: float = Field(0.0, ge=0, le=1, description="not implemented: 0 only")
    repainting_start: float = Field(0.0, ge=-600, le=600, description="repaint/lego window start, seconds")
    repainting_end: float = Field(-1.0, ge=-600, le=1200, description="window end, seconds; negative: the default")
    latent_shift: float = Field(0.0, ge=-100, le=100, description="not implemented: 0 only")
    latent_rescale: float = Field(1.0, ge=-100, le=100, description="not implemented: 1 only")
    custom_timesteps: str = Field("", max_length=4000, description="comma-separated timesteps from near 1 down to 0")
    task_type: TaskType = "text2music"
    track: str = Field("", max_length=200, description='extract/lego: a track; complete: "DRUMS | BASS"')
    solver: Literal["euler", "sde", "dpm3m", "stork4", "heun"] = Field(
        "euler", description="the DiT's ODE/SDE solver (docs/controls.md); heun is ours, beyond acestep.cpp's four")
    stork_substeps: int = Field(10, ge=1, le=1000, description="stork4's sub-steps, 2..148")
    lm_mode: Literal["generate", "inspire", "format"] = Field(
        "generate", description="/lm: generate (metadata and codes), inspire (the caption is a query: a whole song, "
                                "no codes; [Instrumental] lyrics ask for an instrumental), format (caption and lyrics "
                                "rewritten, the metadata filled, no codes); /synth ignores it")
    output_format: Literal["mp3", "wav16", "wav24", "wav32"] = "mp3"
    synth_model: str = Field("", max_length=255, description="DiT GGUF file name (see /props); \"\": the default")
    lm_model: str = Field("", max_length=255, description="LM GGUF file name; \"\": the default")
    adapter: str = Field("", max_length=255, description="an adapter of the server's --adapters folder, by name "
                                                         "(see /props); \"\": none")
    adapter_scale: float = Field(1.0, ge=-100, le=100, description="the adapter's strength")
    vae: str = Field("", max_length=255, description="VAE GGUF file name; \"\": the default")
    peak_clip: int = Field(10, ge=0, le=999, description="0 or 10: the audio is peak-normalised to -1 dBFS")
    mp3_bitrate: int = Field(128, ge=8, le=320, description="kbit/s of mp3 output")


class JobId(BaseModel):
    id: str = Field(description="the job id (16 hex digits)")


class JobStatus(BaseModel):
    """acestep.cpp's status (a waiting job is "running" there), and more: our own state (queued
    apart), the percentage, the current stage of the progress callback, the error of a failed job."""

    model_config = ConfigDict(extra="allow")
    status: Literal["running", "done", "failed", "cancelled"]
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(description="percent of the job done, 0..100")
    stage: Optional[str] = None
    done: int = 0
    total: int = 0
    position: int = Field(0, description="place in the queue (1 = next); 0 when not waiting")
    error: Optional[str] = None


class CancelStatus(BaseModel):
    status: Literal["running", "done", "failed", "cancelled"]


class Error(BaseModel):
    error: str


class UpstreamTask(BaseModel):
    """The body of upstream's POST /release_task (JSON or form fields, plus uploads src_audio and
    ref_audio in a multipart form).  Server-side paths are refused: audio arrives as uploads."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True, title="UpstreamTask")

    prompt: str = Field("", max_length=MAX_TEXT, validation_alias=AliasChoices("prompt", "caption"))
    lyrics: str = Field("", max_length=MAX_TEXT)
    thinking: bool = Field(False, description="the LM writes the audio codes first")
    sample_mode: bool = Field(False, description="not implemented: false only")
    sample_query: str = Field("", max_length=MAX_TEXT, description="not implemented: empty only")
    use_format: bool = Field(False, description="not implemented: false only")
    model: Optional[str] = Field(None, max_length=255, validation_alias=AliasChoices("model", "dit_model"))
    bpm: Optional[int] = Field(None, ge=0, le=1000)
    key_scale: str = Field("", max_length=32, validation_alias=AliasChoices("key_scale", "keyscale"))
    time_signature: Union[str, int] = Field("", validation_alias=AliasChoices("time_signature", "timesignature"))
    vocal_language: str = Field("en", max_length=16, validation_alias=AliasChoices("vocal_language", "language"))
    audio_duration: Optional[float] = Field(None, ge=0, le=600,
                                            validation_alias=AliasChoices("audio_duration", "duration"))
    inference_steps: Optional[int] = Field(None, ge=0, le=1000)
    guidance_scale: Optional[float] = Field(None, ge=0, le=100)
    use_random_seed: bool = True
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    batch_size: Optional[int] = Field(None, ge=1, le=9)
    audio_code_string: str = Field("", max_length=MAX_CODES_TEXT,
                                   validation_alias=AliasChoices("audio_code_string", "audio_codes"))
    repainting_start: float = Field(0.0, ge=-600, le=600)
    repainting_end: Optional[float] = Field(None, ge=-600, le=1200)
    instruction: Optional[str] = Field(None, max_length=MAX_TEXT, description="not settable: follows task_type")
    audio_cover_strength: float = Field(1.0, ge=0, le=1)
    task_type: TaskType = "text2music"
    use_adg: bool = Field(False, description="adaptive projected guidance's angle form (base/SFT, guidance > 1)")
    cfg_interval_start: float = Field(0.0, ge=0, le=1)
    cfg_interval_end: float = Field(1.0, ge=0, le=1)
    infer_method: Literal["ode", "sde"] = Field("ode", description="ode: the euler solver; sde: the sde solver")
    shift: float = Field(3.0, gt=0, le=100)
    timesteps: Optional[str] = Field(None, max_length=4000)
    audio_format: Literal["mp3", "wav", "flac"] = "mp3"
    use_tiled_decode: bool = Field(True, description="always tiled here")
    lm_model_path: Optional[str] = Field(None, max_length=255, validation_alias=AliasChoices("lm_model_path",
                                                                                             "lm_model"))
    lm_backend: str = Field("vllm", max_length=16, description="ignored: the LM runs on GGML")
    constrained_decoding: bool = True
    constrained_decoding_debug: bool = False
    use_cot_caption: bool = True
    use_cot_language: bool = True
    is_format_caption: bool = False
    allow_lm_batch: bool = True
    lm_temperature: float = Field(0.85, ge=0, le=10)
    lm_cfg_scale: float = Field(2.5, ge=0, le=100)
    lm_top_k: Optional[int] = Field(None, ge=0, le=1000000)
    lm_top_p: Optional[float] = Field(0.9, gt=0, le=1)
    lm_repetition_penalty: float = Field(1.0, description="not implemented: 1 only")
    lm_negative_prompt: str = Field("NO USER INPUT", max_length=MAX_TEXT)
    ai_token: Optional[str] = Field(None, max_length=512, description="the API key, as upstream's clients send it")
    src_audio_path: Optional[str] = Field(None, description="refused: upload the file as src_audio")
    reference_audio_path: Optional[str] = Field(None, description="refused: upload the file as ref_audio")


class QueryResult(BaseModel):
    model_config = ConfigDict(extra="forbid", title="QueryResult")
    task_id_list: Union[list[str], str] = Field(description="task ids, as a list or a JSON string of one")
    ai_token: Optional[str] = Field(None, max_length=512)


class Envelope(BaseModel):
    """Upstream's response envelope."""

    data: object = None
    code: int = 200
    error: Optional[str] = None
    timestamp: int
    extra: object = None
