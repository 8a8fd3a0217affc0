#!/usr/bin/python3
"""PyTorch peer of fedprof's profile encoder, for the speed benchmark (bench/speed.sh).

The model is the one specified in common/model.h, written the way a PyTorch user would
(SASRec.pytorch style: padded [B, T] tensors, masks, nn.Linear / nn.LayerNorm / F ops):

    x_t = item_emb[seq_t] * sqrt(dim) + pos_emb[t]        t = 0..T-1 of the left-padded row
    x   = dropout(x) * mask                               mask_t = (seq_t != 0)
    per block (pre-LayerNorm):
        x = x + dropout(Wo MHA(LN1(x)) + bo)              causal, padding keys masked;
                                                          MHA = dropout_a(softmax(QK^T/sqrt(dh))) V
                                                          (dropout on the probabilities at rate
                                                          --attn-dropout, as model.attn_dropout; 0 = off)
        x = x + dropout(W2 dropout(relu(W1 LN2(x) + b1)) + b2)
        x = x * mask
    h = LN_final(x); profile = h[:, T-1]; score(item) = <h_t, item_emb[item]>
    loss = mean over positions with pos != 0 of
           -log sigmoid(<h_t, E[pos_t]>) - log sigmoid(-<h_t, E[neg_t]>)   (+ l2_emb ||E||^2)

Data semantics follow common/data.h: leave-one-out (the last 2 items of users with >= 3 items
are held out), an epoch visits every user with >= 2 training items once in a shuffled order,
seq/pos right-aligned in maxlen, one negative per position drawn uniformly from the items the
user never interacted with in training (rejection sampling). Batches are built vectorised in
numpy, outside the timed step region, and their cost is timed and reported separately.

Run with Debian's /usr/bin/python3 (torch 1.13). Prints one JSON line.
"""
import argparse
import json
import math
import os
import resource
import sys
import time


def _early_env():
    # BLAS threads must be fixed before numpy/torch load OpenBLAS.
    for i, a in enumerate(sys.argv):
        if a == "--blas-threads" and i + 1 < len(sys.argv):
            os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[i + 1]
        elif a.startswith("--blas-threads="):
            os.environ["OPENBLAS_NUM_THREADS"] = a.split("=", 1)[1]
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # glibc malloc returns every block above its mmap threshold (<= 32 MiB, adapted at run time)
    # to the kernel on free, so each large activation (e.g. the [B, T, T] attention scores) is
    # page-faulted in again on every step: softmax runs ~15x slower. The usual PyTorch CPU
    # tuning (jemalloc/tcmalloc, or these two variables) keeps freed memory in the heap.
    # Applied unless --glibc-malloc-defaults; the process re-executes itself once to set them.
    if (__name__ == "__main__" and "--glibc-malloc-defaults" not in sys.argv
            and "MALLOC_MMAP_THRESHOLD_" not in os.environ):
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 40)
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(1 << 40)
        os.execv(sys.executable, [sys.executable] + sys.argv)


_early_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ----------------------------------------------------------------------------------------- data

def load_text(path):
    """fedprof text format: "user item [ts]" per line, each user's lines in time order.
    Users are numbered in order of first appearance; items get dense ids 1..n (numeric order
    when every item id is a positive integer, else order of first appearance), as data.h."""
    users, items = [], []
    with open(path, "r") as f:
        for line in f:
            p = line.split()
            if len(p) < 2:
                continue
            users.append(p[0])
            items.append(p[1])
    umap = {}
    uidx = np.fromiter((umap.setdefault(u, len(umap)) for u in users), dtype=np.int64, count=len(users))
    try:
        iv = np.array(items, dtype=np.int64)
        numeric = bool((iv > 0).all())
    except ValueError:
        numeric = False
    if numeric:
        uniq, inv = np.unique(iv, return_inverse=True)
    else:
        imap = {}
        inv = np.fromiter((imap.setdefault(s, len(imap)) for s in items), dtype=np.int64, count=len(items))
        uniq = imap
    item_ids = (inv + 1).astype(np.int64)
    order = np.argsort(uidx, kind="stable")  # group by user, keep time order
    n_users = len(umap)
    counts = np.bincount(uidx, minlength=n_users)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return item_ids[order], offsets, len(uniq)


def right_aligned(items, offsets, ends, width):
    """[U x width] matrix: row u holds items[offsets[u] .. ends[u]) truncated to its last
    `width`, right-aligned, left-padded with 0."""
    src = ends[:, None] - width + np.arange(width)[None, :]
    ok = src >= offsets[:-1, None]
    return np.where(ok, items[np.clip(src, 0, len(items) - 1)], 0).astype(np.int64)


class Batcher:
    """Vectorised numpy version of fp_batcher (common/data.h)."""

    def __init__(self, items, offsets, n_items, maxlen, batch, seed):
        n = np.diff(offsets)
        train_len = np.where(n >= 3, n - 2, n)
        self.n_items, self.maxlen, self.batch = n_items, maxlen, batch
        self.rng = np.random.default_rng(seed)
        X = right_aligned(items, offsets, offsets[:-1] + train_len, maxlen + 1)
        self.seq = X[:, :-1]
        self.pos = np.where(self.seq != 0, X[:, 1:], 0)
        self.users = np.nonzero(train_len >= 2)[0]
        # Sorted keys u * (n_items + 1) + item of every training interaction (membership test).
        uid = np.repeat(np.arange(len(n)), n)
        within = np.arange(len(items)) - offsets[uid]
        tr = within < train_len[uid]
        self.keys = np.unique(uid[tr] * (n_items + 1) + items[tr])

    def batches_per_epoch(self):
        return (len(self.users) + self.batch - 1) // self.batch

    def _negatives(self, users, pos):
        neg = np.zeros_like(pos)
        r, c = np.nonzero(pos)
        u = users[r]
        todo = np.arange(len(r))
        cand = np.empty(len(r), dtype=np.int64)
        while len(todo):
            x = self.rng.integers(1, self.n_items + 1, size=len(todo))
            k = u[todo] * (self.n_items + 1) + x
            j = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
            hit = self.keys[j] == k
            cand[todo[~hit]] = x[~hit]
            todo = todo[hit]
        neg[r, c] = cand
        return neg

    def epoch(self):
        """All batches of one shuffled epoch, as torch int64 tensors (seq, pos, neg)."""
        perm = self.rng.permutation(self.users)
        out = []
        for s in range(0, len(perm), self.batch):
            us = perm[s:s + self.batch]
            seq, pos = self.seq[us], self.pos[us]
            neg = self._negatives(us, pos)
            out.append((torch.from_numpy(seq), torch.from_numpy(pos), torch.from_numpy(neg)))
        return out


# ---------------------------------------------------------------------------------------- model

class Block(nn.Module):
    def __init__(self, dim, heads, dropout, attn_impl, attn_dropout=0.0):
        super().__init__()
        self.heads, self.p, self.impl, self.pa = heads, dropout, attn_impl, attn_dropout
        self.ln1 = nn.LayerNorm(dim, eps=1e-8)
        self.ln2 = nn.LayerNorm(dim, eps=1e-8)
        if attn_impl == "mha":
            # dropout= is applied to the attention probabilities in training mode (as fedprof)
            self.mha = nn.MultiheadAttention(dim, heads, dropout=attn_dropout, bias=True, batch_first=True)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)

    def attention(self, y, bias):
        """bias: additive mask [B, T, T] (0 or -1e9: causal and padding keys)."""
        if self.impl == "mha":
            B = y.shape[0]
            m = bias if self.heads == 1 else bias.repeat_interleave(self.heads, dim=0)
            a, _ = self.mha(y, y, y, attn_mask=m, need_weights=False)
            return a
        B, T, D = y.shape
        H = self.heads
        dh = D // H
        q, k, v = self.qkv(y).chunk(3, dim=-1)
        if H > 1:
            q, k, v = (t.reshape(B, T, H, dh).transpose(1, 2).reshape(B * H, T, dh) for t in (q, k, v))
            bias = bias.repeat_interleave(H, dim=0)
        s = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(dh))
        a = torch.bmm(F.dropout(torch.softmax(s, dim=-1), self.pa, self.training), v)
        if H > 1:
            a = a.reshape(B, H, T, dh).transpose(1, 2).reshape(B, T, D)
        return self.out(a)

    def forward(self, x, bias, mask):
        x = x + F.dropout(self.attention(self.ln1(x), bias), self.p, self.training)
        h = F.dropout(F.relu(self.w1(self.ln2(x))), self.p, self.training)
        x = x + F.dropout(self.w2(h), self.p, self.training)
        return x * mask


class SASRec(nn.Module):
    def __init__(self, n_items, dim, blocks, heads, maxlen, dropout, attn_impl="manual", attn_dropout=0.0):
        super().__init__()
        assert dim % heads == 0
        self.dim, self.maxlen, self.p = dim, maxlen, dropout
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(maxlen, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, attn_impl, attn_dropout) for _ in range(blocks))
        self.ln_f = nn.LayerNorm(dim, eps=1e-8)
        self.register_buffer("causal", torch.ones(maxlen, maxlen, dtype=torch.bool).triu(1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        # model.h: Xavier-uniform matrices, N(0, 0.02) embeddings, LN (1, 0), biases 0, row 0 = 0.
        for name, p in self.named_parameters():
            if p.dim() == 2 and "emb" not in name:
                nn.init.xavier_uniform_(p)
            elif "emb" in name:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)
        if self.blocks and hasattr(self.blocks[0], "mha"):
            for b in self.blocks:  # in_proj is [3D x D]: Xavier per projection matrix
                for w in b.mha.in_proj_weight.data.chunk(3, dim=0):
                    nn.init.xavier_uniform_(w)
        elif self.blocks:
            for b in self.blocks:
                for w in b.qkv.weight.data.chunk(3, dim=0):
                    nn.init.xavier_uniform_(w)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq):
        """seq: [B, T] int64, left-padded. Returns h = LN_final(x): [B, T, D]."""
        pad = seq == 0
        mask = (~pad).unsqueeze(-1).to(torch.float32)
        x = self.item_emb(seq) * math.sqrt(self.dim) + self.pos_emb.weight
        x = F.dropout(x, self.p, self.training) * mask
        # Additive mask: causal and padding keys. Finite (-1e9), so a padding query, whose keys
        # are all padding, gets finite values (zeroed by the mask) instead of NaN.
        bias = torch.zeros(seq.shape[0], self.maxlen, self.maxlen, device=seq.device).masked_fill_(
            self.causal.unsqueeze(0) | pad.unsqueeze(1), -1e9)
        for b in self.blocks:
            x = b(x, bias, mask)
        return self.ln_f(x)

    def loss(self, seq, pos, neg, l2_emb=0.0):
        h = self.encode(seq)
        sel = pos != 0
        hs = h[sel]
        pl = (hs * self.item_emb(pos[sel])).sum(-1)
        nl = (hs * self.item_emb(neg[sel])).sum(-1)
        # -log sigmoid(p) - log sigmoid(-n), averaged over positions
        loss = (F.softplus(-pl) + F.softplus(nl)).mean()
        if l2_emb > 0:
            loss = loss + l2_emb * self.item_emb.weight.pow(2).sum()
        return loss

    def profiles(self, seq):
        return self.encode(seq)[:, -1, :]


def read_safetensors(path):
    """Minimal safetensors reader (F32 only): {name: np.ndarray}, metadata."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
        blob = f.read()
    meta = hdr.pop("__metadata__", {})
    out = {}
    for k, v in hdr.items():
        assert v["dtype"] == "F32", (k, v["dtype"])
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(blob[b:e], dtype="<f4").reshape(v["shape"])
    return out, meta


def load_fedprof(model, path):
    """Copy a fedprof model.safetensors (common/model.c layout; weights [in x out], y = x W + b)
    into this module, to check that both compute the same function."""
    t, _ = read_safetensors(path)
    # fedprof may prefix names (e.g. "model."): match by suffix.
    def get(name):
        hits = [k for k in t if k == name or k.endswith("." + name)]
        assert len(hits) == 1, (name, hits)
        return torch.from_numpy(t[hits[0]].copy())
    with torch.no_grad():
        model.item_emb.weight.copy_(get("item_emb"))
        model.pos_emb.weight.copy_(get("pos_emb"))
        for i, b in enumerate(model.blocks):
            g = lambda n: get("blocks.%d.%s" % (i, n))  # noqa: E731
            b.ln1.weight.copy_(g("ln1.g")); b.ln1.bias.copy_(g("ln1.b"))
            b.ln2.weight.copy_(g("ln2.g")); b.ln2.bias.copy_(g("ln2.b"))
            w = torch.cat([g("attn.wq").t(), g("attn.wk").t(), g("attn.wv").t()], 0)
            bias = torch.cat([g("attn.bq"), g("attn.bk"), g("attn.bv")], 0)
            if hasattr(b, "mha"):
                b.mha.in_proj_weight.copy_(w); b.mha.in_proj_bias.copy_(bias)
                b.mha.out_proj.weight.copy_(g("attn.wo").t()); b.mha.out_proj.bias.copy_(g("attn.bo"))
            else:
                b.qkv.weight.copy_(w); b.qkv.bias.copy_(bias)
                b.out.weight.copy_(g("attn.wo").t()); b.out.bias.copy_(g("attn.bo"))
            b.w1.weight.copy_(g("ffn.w1").t()); b.w1.bias.copy_(g("ffn.b1"))
            b.w2.weight.copy_(g("ffn.w2").t()); b.w2.bias.copy_(g("ffn.b2"))
        model.ln_f.weight.copy_(get("ln_f.g")); model.ln_f.bias.copy_(get("ln_f.b"))


# ----------------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--maxlen", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128, help="training batch (embed: --embed-batch)")
    ap.add_argument("--embed-batch", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--attn-dropout", type=float, default=0.0)
    ap.add_argument("--l2-emb", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = all)")
    ap.add_argument("--warmup-steps", type=int, default=3, help="first steps excluded from timing")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="OPENBLAS_NUM_THREADS (default: env or 1)")
    ap.add_argument("--glibc-malloc-defaults", action="store_true",
                    help="do not set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ (slower torch)")
    ap.add_argument("--attn", choices=["manual", "mha"], default="manual")
    ap.add_argument("--foreach", type=int, default=1, help="Adam foreach implementation")
    ap.add_argument("--mode", choices=["train", "embed"], default="train")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--load-fedprof", metavar="FILE", help="embed: use fedprof's model.safetensors")
    ap.add_argument("--save-profiles", metavar="FILE", help="embed: write the profiles (.npy)")
    ap.add_argument("--json", action="store_true", help="(output is always one JSON line)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (train: batches are copied to it per step, "
                    "inside the timed step; loss.item() waits for the GPU)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rss_import = peak_rss_mb()

    t0 = time.perf_counter()
    items, offsets, n_items = load_text(a.data)
    n_users = len(offsets) - 1
    load_s = time.perf_counter() - t0

    model = SASRec(n_items, a.dim, a.blocks, a.heads, a.maxlen, a.dropout, a.attn, a.attn_dropout)
    dev = torch.device(a.device)
    info = {"impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "attn": a.attn, "device": a.device,
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default"),
            "users": n_users, "items": n_items, "interactions": int(len(items)),
            "load_seconds": round(load_s, 3), "rss_after_import_mb": round(rss_import, 1)}

    if a.load_fedprof:
        load_fedprof(model, a.load_fedprof)
    model.to(dev)
    if a.mode == "train":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.98), eps=1e-8,
                               foreach=bool(a.foreach))
        t0 = time.perf_counter()
        bt = Batcher(items, offsets, n_items, a.maxlen, a.batch, a.seed)
        prep_s = time.perf_counter() - t0
        step = timed_steps = timed_rows = all_rows = 0
        step_s = all_step_s = batch_s = 0.0
        losses = []
        last_epoch_loss = []
        done = False
        for ep in range(a.epochs):
            t0 = time.perf_counter()
            batches = bt.epoch()
            batch_s += time.perf_counter() - t0
            last_epoch_loss = []
            for seq, pos, neg in batches:
                t0 = time.perf_counter()
                if dev.type != "cpu":
                    seq, pos, neg = seq.to(dev), pos.to(dev), neg.to(dev)
                loss = model.loss(seq, pos, neg, a.l2_emb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lv = loss.item()
                dt = time.perf_counter() - t0
                step += 1
                all_step_s += dt
                all_rows += seq.shape[0]
                if step > a.warmup_steps:
                    step_s += dt
                    timed_steps += 1
                    timed_rows += seq.shape[0]
                losses.append(lv)
                last_epoch_loss.append(lv)
                if not math.isfinite(lv):
                    print(json.dumps({"error": "non-finite loss", "step": step}))
                    sys.exit(1)
                if a.max_steps and step >= a.max_steps:
                    done = True
                    break
            if done:
                break
        out = {
            "seqs_per_s": round(timed_rows / step_s, 2) if step_s > 0 else None,
            "steps": timed_steps, "seconds": round(step_s, 3),
            "seqs_per_s_incl_batching": round(all_rows / (all_step_s + batch_s + prep_s), 2),
            "all_steps": step, "all_step_seconds": round(all_step_s, 3),
            "batching_seconds": round(batch_s + prep_s, 3),
            "warmup_steps_excluded": a.warmup_steps, "epochs": a.epochs,
            "batches_per_epoch": bt.batches_per_epoch(), "trainable_users": int(len(bt.users)),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "first_loss": round(losses[0], 5),
            "final_loss": round(float(np.mean(last_epoch_loss)), 5),
            "final_step_loss": round(losses[-1], 5),
        }
    else:
        model.eval()
        t0 = time.perf_counter()
        # A user's profile input: the whole history (last maxlen items), right-aligned.
        S = torch.from_numpy(right_aligned(items, offsets, offsets[1:], a.maxlen))
        prep_s = time.perf_counter() - t0
        eb = a.embed_batch
        prof = torch.empty(n_users, a.dim)
        with torch.no_grad():
            model.profiles(S[:eb].to(dev))  # one warm-up batch, not timed
            t0 = time.perf_counter()
            for s in range(0, n_users, eb):
                prof[s:s + eb] = model.profiles(S[s:s + eb].to(dev)).cpu()
            sec = time.perf_counter() - t0
        assert torch.isfinite(prof).all()
        if a.save_profiles:
            np.save(a.save_profiles, prof.numpy())
        out = {"profiles_per_s": round(n_users / sec, 2), "users": n_users, "seconds": round(sec, 3),
               "prep_seconds": round(prep_s, 3), "embed_batch": eb, "warmup_batches_excluded": 1,
               "peak_rss_mb": round(peak_rss_mb(), 1)}
    out.update(info)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
