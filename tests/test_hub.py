"""Which model files a first run fetches and uses: a (fake) hub repo holding every variant and
quant as the published one does, online and offline."""
from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import soundfile as sf
from huggingface_hub.hf_api import RepoFile

import acestep_ggml as ace
from acestep_ggml import cli, hub

CAPTION = "warm analog pads, slow"
GB = 10**9
# The published repo's files (acestep.cpp's models.sh names every one) at about their sizes.
DIT_TYPES = {"BF16": 4.8, "Q8_0": 2.6, "Q6_K": 2.0, "Q5_K_M": 1.7, "Q4_K_M": 1.5}
PUBLISHED = {
    **{f"acestep-v15-{v}-{t}.gguf": int(gb * GB) for v in ("turbo", "sft", "base", "turbo-shift1", "turbo-shift3",
                                                              "turbo-continuous") for t, gb in DIT_TYPES.items()},
    # XL (4B DiT): about twice the 2B's bytes.
    **{f"acestep-v15-xl-{v}-{t}.gguf": int(1.95 * gb * GB) for v in ("turbo", "sft", "base")
       for t, gb in DIT_TYPES.items()},
    "Qwen3-Embedding-0.6B-BF16.gguf": int(1.2 * GB), "Qwen3-Embedding-0.6B-Q8_0.gguf": int(0.64 * GB),
    "vae-BF16.gguf": int(0.34 * GB),
    "acestep-5Hz-lm-0.6B-BF16.gguf": int(1.2 * GB), "acestep-5Hz-lm-0.6B-Q8_0.gguf": int(0.64 * GB),
    "acestep-5Hz-lm-1.7B-BF16.gguf": int(3.4 * GB), "acestep-5Hz-lm-1.7B-Q8_0.gguf": int(1.8 * GB),
    "acestep-5Hz-lm-4B-BF16.gguf": 8 * GB, "acestep-5Hz-lm-4B-Q8_0.gguf": int(4.3 * GB),
    "acestep-5Hz-lm-4B-Q6_K.gguf": int(3.3 * GB), "acestep-5Hz-lm-4B-Q5_K_M.gguf": int(2.9 * GB),
    "README.md": 4000, ".gitattributes": 1500,
}
DEFAULT_SYNTH = ["Qwen3-Embedding-0.6B-BF16.gguf", "acestep-v15-turbo-BF16.gguf", "vae-BF16.gguf"]


@pytest.fixture
def memory(monkeypatch):
    """The memory the LM choice sees: 6 GB unless a test sets another."""
    state = {"bytes": 6 * GB}
    monkeypatch.setattr(hub, "available_memory", lambda device="cpu": state["bytes"])
    return state


def test_choice_follows_the_explicit_rank_not_the_name_order(memory):
    chosen = hub.choose(PUBLISHED)
    # By name, base-BF16 would sort first; the rank puts turbo first and, on a CPU, BF16 first.
    assert chosen == {"acestep-dit": "acestep-v15-turbo-BF16.gguf", "acestep-text-enc": "Qwen3-Embedding-0.6B-BF16.gguf",
                      "acestep-vae": "vae-BF16.gguf", "acestep-lm": "acestep-5Hz-lm-4B-Q8_0.gguf"}
    # The LM by memory: the largest whose size * 1.3 fits (4.3 GB * 1.3 = 5.6 <= 6; 8 GB does not).
    memory["bytes"] = 3 * GB
    assert hub.choose(PUBLISHED)["acestep-lm"] == "acestep-5Hz-lm-1.7B-Q8_0.gguf"  # 1.8 * 1.3 <= 3 < 2.9 * 1.3
    memory["bytes"] = None
    assert hub.choose(PUBLISHED)["acestep-lm"] == "acestep-5Hz-lm-0.6B-Q8_0.gguf"  # unknown: the smallest
    assert hub.choose(PUBLISHED, prefer={"acestep-lm": "1.7B"})["acestep-lm"] == "acestep-5Hz-lm-1.7B-BF16.gguf"

    def without(*gone):
        return {n: s for n, s in PUBLISHED.items() if not any(g in n for g in gone)}

    assert hub.choose(without("-turbo-"))["acestep-dit"] == "acestep-v15-sft-BF16.gguf"
    assert hub.choose(without("-turbo-", "-sft-"))["acestep-dit"] == "acestep-v15-base-BF16.gguf"
    assert hub.choose(without("BF16"))["acestep-dit"] == "acestep-v15-turbo-Q8_0.gguf"
    assert hub.choose(without("BF16", "Q8_0"))["acestep-dit"] == "acestep-v15-turbo-Q6_K.gguf"
    assert hub.choose(without("-turbo-BF16"))["acestep-dit"] == "acestep-v15-turbo-Q8_0.gguf"  # turbo beats SFT's type
    assert hub.choose(PUBLISHED, prefer={"acestep-dit": "sft"})["acestep-dit"] == "acestep-v15-sft-BF16.gguf"
    for v in ("turbo", "sft", "base"):
        assert hub.choose(PUBLISHED, prefer={"acestep-dit": f"xl-{v}"})["acestep-dit"] == f"acestep-v15-xl-{v}-BF16.gguf"
    # The 2B stays the default over XL (memory); XL only where no 2B file is there.
    assert hub.choose(without("v15-turbo", "v15-sft", "v15-base"))["acestep-dit"] == "acestep-v15-xl-turbo-BF16.gguf"
    assert hub.choose(PUBLISHED, kinds=hub.SYNTH_KINDS).keys() == set(hub.SYNTH_KINDS)


@pytest.fixture(scope="module")
def tiny_files(synth_models) -> dict[str, Path]:
    """One tiny GGUF per kind; a fake repo's files of that kind are copies of it."""
    folder = synth_models[2]["f32"]
    return {ace.GGUFFile(str(p)).architecture: p for p in folder.glob("*.gguf")}


def fill(folder: Path, names, tiny_files) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        kind = hub.kind_of_name(name)
        if kind:
            shutil.copy(tiny_files[kind], folder / name)
        else:
            (folder / name).write_text("not a model")
    return folder


def test_a_folder_of_many_variants_uses_the_ranked_files(tiny_files, tmp_path):
    folder = fill(tmp_path / "models", [n for n in PUBLISHED if "lm" not in n], tiny_files)
    synth = ace.Synthesizer(folder, n_threads=1)
    assert {k: p.name for k, p in synth.paths.items()} == {
        "dit": "acestep-v15-turbo-BF16.gguf", "text": "Qwen3-Embedding-0.6B-BF16.gguf", "vae": "vae-BF16.gguf"}
    assert ace.Synthesizer(folder, n_threads=1, dit="sft").paths["dit"].name == "acestep-v15-sft-BF16.gguf"
    assert ace.Synthesizer(folder, n_threads=1, dit="xl-turbo").paths["dit"].name == "acestep-v15-xl-turbo-BF16.gguf"
    assert ace.Pipeline(folder, n_threads=1, dit="xl-sft").synth.paths["dit"].name == "acestep-v15-xl-sft-BF16.gguf"


@pytest.fixture
def online_hub(tiny_files, tmp_path, monkeypatch, memory):
    """The published repo's listing, and a snapshot_download that records what it was asked
    for and lays out tiny copies of those files in one snapshot folder."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    snapshot = tmp_path / "hub" / "snapshots" / "0123abcd"
    fetched: list[list[str]] = []

    def list_repo_tree(self, repo_id, *args, **kwargs):
        assert repo_id == hub.GGUF_REPO
        return iter([RepoFile(path=name, size=size, oid="0" * 40) for name, size in PUBLISHED.items()])

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kwargs):
        assert repo_id == hub.GGUF_REPO and allow_patterns is not None, "only named files may be fetched"
        fetched.append(sorted(allow_patterns))
        fill(snapshot, [n for n in PUBLISHED if n in allow_patterns], tiny_files)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return fetched


def test_first_run_fetches_only_the_default_set(online_hub, tmp_path, capsys):
    out = tmp_path / "song.wav"
    # --no-lm: the synth stage's three files and no LM.
    assert cli.main(["generate", "--caption", CAPTION, "--no-lm", "--duration", "1", "--threads", "1", "-o",
                     str(out)]) == 0
    assert online_hub == [DEFAULT_SYNTH]
    assert f"{hub.GGUF_REPO}: acestep-v15-turbo-BF16.gguf, Qwen3-Embedding-0.6B-BF16.gguf, vae-BF16.gguf" \
        in capsys.readouterr().err
    assert sf.info(str(out)).channels == 2

    # With the LM: it is fetched when it runs, chosen by memory (6 GB: the 4B at Q8_0).
    online_hub.clear()
    assert cli.main(["generate", "--caption", CAPTION, "--duration", "10", "--bpm", "90", "--keyscale", "A minor",
                     "--timesignature", "4", "--threads", "1", "-o", str(out)]) == 0
    assert online_hub == [DEFAULT_SYNTH, ["acestep-5Hz-lm-4B-Q8_0.gguf"]]
    assert f"{hub.GGUF_REPO}: acestep-5Hz-lm-4B-Q8_0.gguf" in capsys.readouterr().err

    online_hub.clear()
    assert cli.main(["download", "--quiet"]) == 0
    assert online_hub == [sorted([*DEFAULT_SYNTH, "acestep-5Hz-lm-4B-Q8_0.gguf"])]
    assert cli.main(["download", "--quiet", "--files", "vae-*"]) == 0
    assert online_hub[-1] == ["vae-*"]
    # A preference fetches the best file that matches it.
    assert ace.Synthesizer(hub.GGUF_REPO, dit="sft").paths["dit"].name == "acestep-v15-sft-BF16.gguf"
    assert online_hub[-1] == ["Qwen3-Embedding-0.6B-BF16.gguf", "acestep-v15-sft-BF16.gguf", "vae-BF16.gguf"]
    # --dit xl-turbo on the CLI fetches and uses the XL DiT.
    assert cli.main(["generate", "--caption", CAPTION, "--no-lm", "--duration", "1", "--threads", "1",
                     "--dit", "xl-turbo", "-o", str(out)]) == 0
    assert online_hub[-1] == ["Qwen3-Embedding-0.6B-BF16.gguf", "acestep-v15-xl-turbo-BF16.gguf", "vae-BF16.gguf"]


def test_offline_the_choice_is_made_among_cached_files(tiny_files, tmp_path, monkeypatch, memory, capsys):
    cache = tmp_path / "hf-cache"
    repo = cache / ("models--" + hub.GGUF_REPO.replace("/", "--"))
    # An earlier download of everything but the turbo BF16 DiT and the 4B LMs.
    fill(repo / "snapshots" / "0123abcd", [n for n in PUBLISHED if "turbo-BF16" not in n and "4B" not in n],
         tiny_files)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("offline: the hub must not be asked")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", no_network)
    pipe = ace.Pipeline(hub.GGUF_REPO, n_threads=1)
    assert pipe.synth.paths["dit"].name == "acestep-v15-turbo-Q8_0.gguf"  # the best turbo cached
    assert "acestep-v15-turbo-Q8_0.gguf, Qwen3-Embedding-0.6B-BF16.gguf, vae-BF16.gguf" in capsys.readouterr().err
    # Each cached LM is a copy of one tiny file, so by size they tie and the name decides;
    # the choice among the cached ones is the one LM.from_models makes.
    assert hub.choose({p.name: p.stat().st_size for p in pipe.folder.glob("*lm*")})["acestep-lm"] == \
        hub.choose_lm(sorted(pipe.folder.glob("*lm*")), memory["bytes"]).name


def test_unreachable_hub_falls_back_to_the_cache(tiny_files, tmp_path, monkeypatch, memory):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", unreachable)
    with pytest.raises(hub.ModelsNotFound, match="could not be listed on the hub .*no route to host"):
        hub.resolve(hub.GGUF_REPO)
