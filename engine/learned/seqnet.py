"""A SASRec-style next-item network (Kang & McAuley, 2018) as a stage-1 source of the learned recommender.

In (``SeqNet.fit``): ordered item-row sequences (``{user: Sequence}``), the catalog size, the settings below. Trained in
torch (the ``learn`` extra) with full-softmax cross-entropy at every position, a random window of
``maxlen + 1`` items of longer histories each epoch, for a fixed number of epochs (deterministic for a seed and thread
count; no early stopping, so no held-out events are read).
Out: ``SeqNet.probs(items)``: P(next item = j) over the whole catalog after a history (float64, sums to 1), computed in
numpy from the stored weights, so serving needs no torch and the value does not depend on the BLAS thread count (Ray
workers compute training rows with one thread). ``arrays()`` / ``from_arrays()`` for ``PersonaModel.save``.

``build_net`` (the torch module) and ``training_batch`` (crops and padding) are shared with the offline SASRec baseline
(``engine.offline.seqmodels``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import numpy as np

from ..errors import missing
from .index import Sequence

__all__ = ["SeqNet", "build_net", "training_batch"]

log = logging.getLogger(__name__)

_PREFIX = "sas_"
_W = "sas_w."  # weight arrays: _W + the torch state-dict name
_EPS = 1e-5  # torch LayerNorm's default


def build_net(n_items: int, dim: int, maxlen: int, blocks: int, heads: int, dropout: float, sparse: bool = False):
    """Item embeddings (row 0 = padding) + learned positions counted back from the last item + pre-norm transformer
    blocks with a causal mask + a final LayerNorm; ``logits(h)`` ties the output to the item embeddings plus a bias.
    ``sparse``: the item embeddings get sparse gradients (for a sampled softmax, with ``torch.optim.SparseAdam``)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item = nn.Embedding(n_items + 1, dim, padding_idx=0, sparse=sparse)
            self.pos = nn.Embedding(maxlen, dim)
            layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=dropout, batch_first=True, norm_first=True, activation="gelu")
            self.enc = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.drop = nn.Dropout(dropout)
            self.out_bias = nn.Parameter(torch.zeros(n_items + 1))
            # Item vectors of norm ~1 (so initial logits have unit scale against the ~sqrt(dim)-norm
            # LayerNorm output); the sqrt(dim) input scaling then gives inputs of the pos scale.
            nn.init.normal_(self.item.weight, std=dim**-0.5)
            with torch.no_grad():
                self.item.weight[0].zero_()
            self.register_buffer("causal", torch.triu(torch.full((maxlen, maxlen), float("-inf")), diagonal=1))

        def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            L = seq.shape[1]
            pos = (lengths[:, None] - 1 - torch.arange(L, device=seq.device)[None, :]).clamp(min=0)
            x = self.item(seq) * math.sqrt(dim) + self.pos(pos)
            x = self.drop(x)
            return self.norm(self.enc(x, mask=self.causal[:L, :L]))

        def logits(self, h: torch.Tensor) -> torch.Tensor:
            return h @ self.item.weight.T + self.out_bias

    return Net()


def training_batch(seqs: list[np.ndarray], maxlen: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, next-item targets and lengths for sequences of 1-based item ids (0 = padding): a random window of
    ``maxlen + 1`` items of each longer sequence, right padding (positions count back from the last item)."""
    crops = []
    for s in seqs:
        if len(s) > maxlen + 1:
            end = int(rng.integers(maxlen + 1, len(s) + 1))
            s = s[end - maxlen - 1 : end]
        crops.append(s)
    L = max(len(s) for s in crops) - 1
    inp = np.zeros((len(crops), L), np.int64)
    tgt = np.zeros((len(crops), L), np.int64)
    lens = np.empty(len(crops), np.int64)
    for r, s in enumerate(crops):
        inp[r, : len(s) - 1] = s[:-1]
        tgt[r, : len(s) - 1] = s[1:]
        lens[r] = len(s) - 1
    return inp, tgt, lens


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + _EPS) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


class SeqNet:
    """The trained network's weights as float64 arrays, and the numpy forward pass over one history."""

    def __init__(self, weights: dict[str, np.ndarray], dim: int, maxlen: int, blocks: int, heads: int, known: np.ndarray,
                 info: dict | None = None):
        self.w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
        self.dim, self.maxlen, self.blocks, self.heads = int(dim), int(maxlen), int(blocks), int(heads)
        self.known = np.asarray(known, bool)  # per item row: in the training sequences (else its vector is its random init)
        self.info = dict(info or {})
        self._out32: tuple[np.ndarray, np.ndarray] | None = None  # relative_probs' float32 output layer, made on first use
        self._out_rows: tuple | None = None  # (rows, their weights or None, their bias): relative_probs(items, rows)

    def __getstate__(self) -> dict:  # Ray ships the model to workers: not the float32 serving copy (rebuilt on use)
        return {**self.__dict__, "_out32": None, "_out_rows": None}

    @property
    def n_items(self) -> int:
        return len(self.w["item.weight"]) - 1

    @classmethod
    def fit(cls, seqs: dict[str, Sequence], n_items: int, *, dim: int = 64, maxlen: int = 50, blocks: int = 2, heads: int = 1,
            dropout: float = 0.5, lr: float = 0.002, batch: int = 32, epochs: int = 39, seed: int = 0, threads: int = 2,
            full_softmax_items: int = 5000, negatives: int = 2048, device: str = "cpu", progress: bool = False) -> SeqNet:
        """Train on every sequence of at least two items (sorted by user id, so the result depends on the data only).

        Catalogs above ``full_softmax_items`` train with a sampled softmax: each batch scores its own targets plus
        ``negatives`` uniformly drawn items instead of the whole catalog (a full softmax at 100k items is ~1 s per batch
        on two cores). The candidates also hold the batch's other targets, which follow popularity, so the uniform
        draws' missing log-Q correction is only approximate; serving still normalises over the whole catalog. The item
        vectors then learn with lazy Adam (``SparseAdam``: only the rows a batch reads move), the rest with Adam.
        ``device``: a torch device for training. On CPU a seed and thread count give the same network bit for bit; on
        CUDA not (atomic adds in the embedding gradient). Torch's global RNG is left as it was."""
        try:
            import torch
        except ImportError as e:  # pragma: no cover - torch comes with the learn extra
            raise missing("learn", "torch (or fit with sequence_epochs=0)") from e
        from tqdm.auto import tqdm

        data = [np.asarray(seqs[u].items, np.int64) + 1 for u in sorted(seqs) if len(seqs[u]) >= 2]
        known = np.zeros(n_items, bool)
        for x in data:
            known[x - 1] = True
        old_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, int(threads)))
        t0 = time.perf_counter()
        dev = torch.device(device)
        cuda = dev.type == "cuda"
        gpu = [dev.index if dev.index is not None else torch.cuda.current_device()] if cuda else []
        try:
            # only the generators training uses are seeded, inside a fork: the caller's torch RNG (an in-process LLM's
            # sampling, say, on this or another device) is left as it was
            with torch.random.fork_rng(devices=gpu), (torch.cuda.device(gpu[0]) if cuda else contextlib.nullcontext()):
                torch.default_generator.manual_seed(seed)
                if cuda:
                    torch.cuda.manual_seed(seed)
                rng = np.random.default_rng(seed)
                sampled = n_items > full_softmax_items
                sparse = sampled and dev.type in ("cpu", "cuda")  # sparse gradients and SparseAdam exist there
                net = build_net(n_items, dim, maxlen, blocks, heads, dropout, sparse=sparse).to(dev)
                if sparse:  # lazy Adam on the item vectors: a step touches the batch's rows, not all n_items x dim
                    # (dense Adam over 1M x 64 was ~0.45 s a step, 578 of 876 s of fit() at 1M items)
                    rest = [p for name, p in net.named_parameters() if name != "item.weight"]
                    opts = [torch.optim.SparseAdam([net.item.weight], lr=lr), torch.optim.Adam(rest, lr=lr)]
                else:
                    opts = [torch.optim.Adam(net.parameters(), lr=lr)]
                ce = torch.nn.CrossEntropyLoss()
                loss = None
                for _ in tqdm(range(epochs if data else 0), desc="sequence model", disable=not progress, leave=False):
                    net.train()
                    perm = rng.permutation(len(data))
                    for b in range(0, len(perm), batch):
                        inp, tgt, lens = training_batch([data[i] for i in perm[b : b + batch]], maxlen, rng)
                        tgt_t = torch.from_numpy(tgt).to(dev)
                        h = net(torch.from_numpy(inp).to(dev), torch.from_numpy(lens).to(dev))
                        m = tgt_t > 0
                        if not sampled:
                            logits = net.logits(h[m])
                            logits[:, 0] = float("-inf")  # never predict padding
                            loss = ce(logits, tgt_t[m])
                        else:
                            pos = tgt_t[m]
                            cand = torch.unique(torch.cat([pos, torch.from_numpy(rng.integers(1, n_items + 1, negatives)).to(dev)]))
                            out = torch.nn.functional.embedding(cand, net.item.weight, sparse=sparse)  # sparse gradient rows
                            logits = h[m] @ out.T + net.out_bias[cand]
                            loss = ce(logits, torch.searchsorted(cand, pos))
                        for opt in opts:
                            opt.zero_grad()
                        loss.backward()
                        for opt in opts:
                            opt.step()
                net.eval()
                weights = {k: v.detach().double().cpu().numpy().copy() for k, v in net.state_dict().items() if k != "causal"}
        finally:
            torch.set_num_threads(old_threads)
        info = {"epochs": epochs, "sequences": len(data), "device": str(device), "sampled_softmax": sampled, "seconds": round(time.perf_counter() - t0, 1),
                "final_loss": None if loss is None else round(float(loss.detach()), 4)}
        log.info("sequence model: %d sequences, %d epochs in %.0fs (last batch loss %s)", len(data), epochs, info["seconds"], info["final_loss"])
        return cls(weights, dim, maxlen, blocks, heads, known, info)

    def hidden(self, items: np.ndarray) -> np.ndarray:
        """The last position's output vector after ``items`` (rows, oldest first; the last ``maxlen`` are read)."""
        w, d = self.w, self.dim
        s = np.asarray(items, np.int64)[-self.maxlen :] + 1
        L = len(s)
        pos = (L - 1) - np.arange(L)
        x = w["item.weight"][s] * math.sqrt(d) + w["pos.weight"][pos]
        mask = np.triu(np.full((L, L), -np.inf), 1)
        hd = d // self.heads
        for b in range(self.blocks):
            p = f"enc.layers.{b}."
            h = _ln(x, w[p + "norm1.weight"], w[p + "norm1.bias"])
            qkv = h @ w[p + "self_attn.in_proj_weight"].T + w[p + "self_attn.in_proj_bias"]
            q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
            heads = []
            for j in range(self.heads):
                sl = slice(j * hd, (j + 1) * hd)
                a = q[:, sl] @ k[:, sl].T / math.sqrt(hd) + mask
                a = np.exp(a - a.max(1, keepdims=True))
                heads.append((a / a.sum(1, keepdims=True)) @ v[:, sl])
            x = x + np.concatenate(heads, 1) @ w[p + "self_attn.out_proj.weight"].T + w[p + "self_attn.out_proj.bias"]
            h = _ln(x, w[p + "norm2.weight"], w[p + "norm2.bias"])
            x = x + _gelu(h @ w[p + "linear1.weight"].T + w[p + "linear1.bias"]) @ w[p + "linear2.weight"].T + w[p + "linear2.bias"]
        return _ln(x[-1], w["norm.weight"], w["norm.bias"])

    def probs(self, items: np.ndarray) -> np.ndarray:
        """P(next = j) for every catalog row j (length ``n_items``); uniform after an empty history."""
        n = self.n_items
        items = np.asarray(items, np.int64)
        items = items[(items >= 0) & (items < n)]
        if not len(items):
            return np.full(n, 1.0 / max(1, n))
        z = self.w["item.weight"][1:] @ self.hidden(items) + self.w["out_bias"][1:]
        z = np.exp(z - z.max())
        return z / z.sum()

    def relative_probs(self, items: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """P(next = j) / P(next = the best item), float32, for every catalog row (or ``rows``): the order of ``probs`` (items below
        e^-103 of the best tie at 0) without the softmax's float64 exp and sum over the catalog, the output layer in
        float32 (the sequence model's largest costs on large catalogs). ``rows`` (distinct item rows): only these, in
        this order, relative to the best of them; the output layer then reads only their weights, so its cost follows
        how many items the caller can score (``candidates.user_state``: those with events), not the catalog's size."""
        n = self.n_items
        items = np.asarray(items, np.int64)
        items = items[(items >= 0) & (items < n)]
        W, b = self._output(rows)
        if not len(items):
            return np.ones(len(b), np.float32)
        h = self.hidden(items).astype(np.float32)
        if W is None:  # most of the catalog: the full product, then the rows'
            Wf, bf = self._output(None)
            z = (Wf @ h + bf)[rows]
        else:
            z = W @ h + b
        return np.exp(z - z.max()) if len(z) else z

    def _output(self, rows: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray]:
        """The float32 output layer (weights, bias), or its ``rows``' copy. Weights None when the rows are over half the
        catalog: the full product, then those rows picked out, costs little more than a product over them alone, while a
        copy would add most of the layer's memory again."""
        if self._out32 is None:  # the weights were trained in float32, so this copy is exact; the product reads half the bytes
            self._out32 = (np.ascontiguousarray(self.w["item.weight"][1:], np.float32), self.w["out_bias"][1:].astype(np.float32))
        if rows is None:
            return self._out32
        kept = self._out_rows
        # gathered again only for other rows: the label-free and the serving stage 1 share this model, each with its own
        # (equal) array, and a fit's LLM-feature pass reads one while requests read the other
        if kept is None or (kept[0] is not rows and not np.array_equal(kept[0], rows)):
            W, b = self._out32
            kept = self._out_rows = (rows, None if 2 * len(rows) > len(b) else W[rows], b[rows])
        return kept[1], kept[2]

    def arrays(self) -> dict:
        """``{name: array}`` for ``PersonaModel.save``: the shape, the known-item mask and the weights, stored as float32
        (torch trained them in float32, so that is exact; they are float64 again in memory)."""
        meta = np.array([self.dim, self.maxlen, self.blocks, self.heads], np.int64)
        return {_PREFIX + "shape": meta, _PREFIX + "known": self.known,
                **{_W + k: v.astype(np.float32) for k, v in self.w.items()}}

    @classmethod
    def from_arrays(cls, a: dict) -> SeqNet | None:
        """The network saved by ``arrays`` (None when the arrays hold none: a model fitted without it)."""
        if _PREFIX + "shape" not in a:
            return None
        if _PREFIX + "known" not in a:  # the layout of development builds between 2026-12-04's c27c576 and 5a1c336
            raise ValueError("this model's sequence model was saved in a pre-release layout: refit it (persona fit)")
        dim, maxlen, blocks, heads = (int(x) for x in a[_PREFIX + "shape"])
        w = {k[len(_W) :]: a[k] for k in a if k.startswith(_W)}
        return cls(w, dim, maxlen, blocks, heads, a[_PREFIX + "known"])
