"""The byte fuzzer's loader process: reads one JSON line per case ({"path", "kind", "base"}),
opens the file through the Python API as its kind's models and runs each a few frames, and
answers one JSON line: {"result": "ok" | "error: <family class>" | "foreign: <class>: <message>"}.
An error outside the package's family (acestep_ggml.errors, OSError) is a finding; so is this
process dying or hanging, which the parent sees."""

from __future__ import annotations

import json
import sys

import numpy as np


def load(path: str, kind: str, base: dict) -> None:
    import acestep_ggml as a

    f = a.GGUFFile(path)
    f.architecture, f.tensors()
    if kind == "acestep-text-enc":
        tok = a.Tokenizer.from_gguf(f)
        ids = tok.encode("warm analog pads")[:8] or [1]
        a.TextEncoder(f, n_threads=1).encode(ids)
    elif kind == "acestep-lm":
        lm = a.LM(f, n_threads=1)
        lm.reset(1, 32)
        lm.prefill(0, lm.tokenizer.encode("hello")[:8] or [1])
        lm.decode([lm.eos])
    elif kind == "acestep-vae":
        vae = a.VAE(f, n_threads=1)
        vae.decode(np.zeros((6, vae.latent_channels), np.float32))
    elif kind == "acestep-dit":
        dit = a.DiT(f, n_threads=1)
        a.Detokenizer(f, n_threads=1).decode([1, 2])
        a.AudioTokenizer(f, n_threads=1).tokenize(np.zeros((10, 64), np.float32))
        cond = a.ConditionEncoder(f, base["acestep-text-enc"], n_threads=1)
        text = np.zeros((3, a.GGUFFile(base["acestep-text-enc"]).hparams.hidden_size), np.float32)
        enc, _ = cond.encode(text, [1, 2, 3])
        x = np.zeros((8, 64), np.float32)
        dit.forward(x, 0.5, enc, x)


def main() -> None:
    from acestep_ggml.errors import AcestepError

    for line in sys.stdin:
        job = json.loads(line)
        try:
            load(job["path"], job["kind"], job["base"])
            result = "ok"
        except (AcestepError, OSError) as e:
            result = f"error: {type(e).__name__}: {str(e)[:300]}"
        except Exception as e:  # noqa: BLE001 - what the fuzzer looks for
            result = f"foreign: {type(e).__name__}: {str(e)[:300]}"
        print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
