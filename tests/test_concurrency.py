"""Threads on one shared backend: two Pipelines generating at once, and models loading in one
thread while another generates.  Nothing crashes, and every result equals the same call run
alone (the native calls release the GIL; graph computations on one backend take turns under
its compute lock, see core/backend.h)."""

from __future__ import annotations

import threading

import numpy as np
from conftest import fresh_seed

import acestep_ggml as ace
from acestep_ggml.lm import LM
from acestep_ggml.models import VAE, DiT, TextEncoder

CAPTION = "warm analog pads, slow"
LYRICS = "[Verse]\nla la la"


def in_threads(*jobs):
    """Runs each job in a thread of its own, all started together; their results, or the first
    exception a job raised."""
    results, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def run(i):
        try:
            start.wait()
            results[i] = jobs[i]()
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread is still running after 10 minutes"
    if errors:
        raise errors[0]
    return results


def test_two_pipelines_generate_in_two_threads_as_they_do_alone(synth_models):
    folder = synth_models[2]["f32"]
    seed = fresh_seed("songs")
    # Both on the CPU backend (one per process, shared), LM and synth stage each.
    kw = [
        dict(duration=10, seed=seed, bpm=100, steps=4, keyscale="A minor", timesignature=4, language="en"),
        dict(duration=12, seed=seed + 1, bpm=90, keyscale="C major", timesignature=3, language="en", steps=4),
    ]

    def song(i):
        return lambda: ace.Pipeline(folder, n_threads=2).generate(CAPTION, LYRICS, **kw[i])

    alone = [song(0)(), song(1)()]
    together = in_threads(song(0), song(1))
    for a, b in zip(alone, together):
        assert a.request == b.request, f"seed {seed}"
        # The same graphs on the same thread count: the same numbers, bit for bit.
        np.testing.assert_array_equal(a.audio, b.audio, err_msg=f"seed {seed}")


def test_models_load_in_one_thread_while_another_generates(synth_models):
    folder = synth_models[2]["f32"]
    seed = fresh_seed("song")
    req = ace.Request(caption=CAPTION, lyrics=LYRICS, duration=3, bpm=120, keyscale="F# minor", timesignature=4, language="en")

    def generate():
        return ace.Synthesizer(folder, n_threads=2)(req, seed=seed).audio

    def load_and_free(rounds=4):
        synth = ace.Synthesizer(folder, n_threads=2)  # opens the files; their models load below
        for _ in range(rounds):
            models = [
                TextEncoder(synth.files["text"], n_threads=2),
                DiT(synth.files["dit"], n_threads=2),
                VAE(synth.files["vae"], n_threads=2),
                LM.from_models(folder, n_threads=2),
            ]
            del models
        return rounds

    alone = generate()
    together, rounds = in_threads(generate, load_and_free)
    assert rounds == 4
    np.testing.assert_array_equal(alone, together, err_msg=f"seed {seed}")
