#!/usr/bin/env python3
"""An independent NumPy forward of a GGUF llama model: the reference kvlab's GGUF import is checked against.

It shares nothing with kvlab's C code. The tensors come from the `gguf` package (GGUFReader, and
gguf.quants.dequantize for every block type); the Q and K weights are turned back from the row order
llama.cpp's converter writes (convert_hf_to_gguf's permute: each head's rows reshaped (2, hd/2) and
transposed, so RoPE's pairs become adjacent) into the Hugging Face order, and RoPE is applied the Hugging Face
way (rotate_half: element i pairs with i + hd/2). kvlab loads the rows as they are and rotates adjacent pairs
(layers/rope.c); agreement of the two forwards therefore proves the layout. Everything else is the plain
Llama: RMSNorm, causal softmax attention with grouped KV heads (query head h reads kv head h // (NH/NKV)),
SwiGLU, embeddings tied to the output. The activations are float64.

Used two ways:
  - as a module by scripts/make-test-gguf.py (load, forward: the fixtures' expected logits);
  - from the command line on a real model, optionally against kvlab:
      scripts/gguf_oracle.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is"
      scripts/gguf_oracle.py --model FILE --prompt TEXT --kvlab build/infer
    The prompt is tokenized with the `tokenizers` package, built from the GGUF vocabulary (or give --ids 1,2,3).
    With --kvlab it runs `infer generate --ckpt FILE --prompt TEXT -n 1 --temperature 0 --logits-out OUT.f32`
    (the V float32 next-token logits after the prompt) and prints both top-1 tokens, max |dlogit|, the logit
    scale (std and max |logit|) and a table of the top tokens with both logits. Exit status 1 when the top-1
    tokens differ or max |dlogit| exceeds --tol times the logit std.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

try:
    import gguf
    from gguf import GGUFReader
except ImportError:  # pragma: no cover
    sys.exit('gguf_oracle.py needs the gguf Python package (pip install gguf)')


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf's permute for a (n_head * hd, in) weight: back to the HF row order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w, n_head):
    """convert_hf_to_gguf's permute (HF row order -> the order llama.cpp stores): used by make-test-gguf.py."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequant(tensor):
    """A ReaderTensor as float32 in numpy order: GGUF dims [in, out] -> (out, in)."""
    a = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return np.asarray(a, dtype=np.float32).reshape(shape)


class Model:
    """The config, the weights in HF order (float32) and the tokenizer fields of a GGUF llama file."""

    def __init__(self, path):
        r = GGUFReader(path)
        arch = _field(r, 'general.architecture')
        if arch != 'llama':
            raise ValueError('%s: architecture %r, the oracle reads llama only' % (path, arch))
        p = 'llama.'
        self.n_layer = int(_field(r, p + 'block_count'))
        self.n_embd = int(_field(r, p + 'embedding_length'))
        self.n_hidden = int(_field(r, p + 'feed_forward_length'))
        self.n_head = int(_field(r, p + 'attention.head_count'))
        self.n_kv_head = int(_field(r, p + 'attention.head_count_kv', self.n_head))
        self.theta = float(_field(r, p + 'rope.freq_base', 10000.0))
        self.eps = float(_field(r, p + 'attention.layer_norm_rms_epsilon'))
        self.tokens = list(_field(r, 'tokenizer.ggml.tokens', []))
        self.token_types = list(_field(r, 'tokenizer.ggml.token_type', [1] * len(self.tokens)))
        self.merges = list(_field(r, 'tokenizer.ggml.merges', []))
        self.pre = _field(r, 'tokenizer.ggml.pre', 'gpt2')
        self.bos = _field(r, 'tokenizer.ggml.bos_token_id')
        self.add_bos = bool(_field(r, 'tokenizer.ggml.add_bos_token', False))
        t = {x.name: x for x in r.tensors}
        if 'output.weight' in t:
            raise ValueError('%s: an untied output.weight; the oracle (like kvlab) ties it to token_embd' % path)
        self.wte = dequant(t['token_embd.weight'])
        self.vocab = self.wte.shape[0]
        self.final_norm = dequant(t['output_norm.weight'])
        self.layers = []
        for l in range(self.n_layer):
            g = lambda n: dequant(t['blk.%d.%s.weight' % (l, n)])
            self.layers.append({
                'attn_norm': g('attn_norm'),
                'wq': unpermute(g('attn_q'), self.n_head),
                'wk': unpermute(g('attn_k'), self.n_kv_head),
                'wv': g('attn_v'), 'wo': g('attn_output'), 'ffn_norm': g('ffn_norm'),
                'w1': g('ffn_gate'), 'w3': g('ffn_up'), 'w2': g('ffn_down')})

    def tokenizer(self):
        """A `tokenizers` byte-level BPE built from the GGUF vocabulary (gpt2 or smollm pre-tokenizer)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        vocab = {s: i for i, s in enumerate(self.tokens)}
        merges = [tuple(m.split(' ', 1)) for m in self.merges]
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if self.pre == 'gpt2':
            tk.pre_tokenizer = byte_level
        elif self.pre == 'smollm':
            tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            raise ValueError('pre-tokenizer %r: the oracle knows gpt2 and smollm' % self.pre)
        tk.decoder = decoders.ByteLevel()
        tk.add_special_tokens([s for s, ty in zip(self.tokens, self.token_types) if ty == 3])
        return tk

    def encode(self, text):
        ids = self.tokenizer().encode(text, add_special_tokens=False).ids
        return ([int(self.bos)] if self.add_bos and self.bos is not None else []) + ids


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def rope_hf(x, theta):
    """Hugging Face RoPE on (T, heads, hd) at positions 0..T-1: rotate_half pairs element i with i + hd/2."""
    T, _, hd = x.shape
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.cos(np.concatenate([ang, ang], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], axis=-1))[:, None, :]
    rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], axis=-1)
    return x * cos + rot * sin


def forward(m, ids):
    """Logits (T, V), float64, for the token ids at positions 0..T-1."""
    ids = np.asarray(ids, dtype=np.int64)
    T, NH, NKV = len(ids), m.n_head, m.n_kv_head
    hd = m.n_embd // NH
    x = m.wte[ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for L in m.layers:
        h = rmsnorm(x, L['attn_norm'], m.eps)
        q = rope_hf((h @ L['wq'].T.astype(np.float64)).reshape(T, NH, hd), m.theta)
        k = rope_hf((h @ L['wk'].T.astype(np.float64)).reshape(T, NKV, hd), m.theta)
        v = (h @ L['wv'].T.astype(np.float64)).reshape(T, NKV, hd)
        k = np.repeat(k, NH // NKV, axis=1)  # query head j reads kv head j // (NH / NKV)
        v = np.repeat(v, NH // NKV, axis=1)
        s = np.einsum('thd,shd->hts', q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        p = s / s.sum(axis=-1, keepdims=True)
        o = np.einsum('hts,shd->thd', p, v).reshape(T, NH * hd)
        x = x + o @ L['wo'].T.astype(np.float64)
        h = rmsnorm(x, L['ffn_norm'], m.eps)
        a = h @ L['w1'].T.astype(np.float64)
        x = x + ((a / (1.0 + np.exp(-a))) * (h @ L['w3'].T.astype(np.float64))) @ L['w2'].T.astype(np.float64)
    x = rmsnorm(x, m.final_norm, m.eps)
    return x @ m.wte.T.astype(np.float64)


def _piece(m, i):
    s = m.tokens[i] if 0 <= i < len(m.tokens) else '?'
    return repr(s.replace('\u0120', ' ').replace('\u010a', '\n'))


def run_kvlab(infer, model, prompt):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, 'logits.f32')
        cmd = [infer, 'generate', '--ckpt', model, '--prompt', prompt, '-n', '1', '--temperature', '0',
               '--logits-out', out]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit('%s failed (%d): %s' % (' '.join(cmd), r.returncode, r.stderr.strip()))
        return np.fromfile(out, dtype='<f4').astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', required=True, help='a GGUF llama file')
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument('--prompt', help='text, tokenized with `tokenizers` from the GGUF vocabulary')
    g.add_argument('--ids', help='comma-separated token ids instead of a prompt')
    ap.add_argument('--kvlab', metavar='INFER', help="kvlab's infer program (e.g. build/infer) to compare with")
    ap.add_argument('--top', type=int, default=10, help='rows of the table (default 10)')
    ap.add_argument('--tol', type=float, default=0.05,
                    help='with --kvlab: the largest max |dlogit| / std(logits) that passes (default 0.05)')
    a = ap.parse_args()
    m = Model(a.model)
    ids = [int(x) for x in a.ids.split(',')] if a.ids else m.encode(a.prompt)
    if not ids:
        sys.exit('the prompt encodes to no tokens')
    print('model: %s  layers %d  embd %d  heads %d/%d  hidden %d  vocab %d  theta %g' %
          (a.model, m.n_layer, m.n_embd, m.n_head, m.n_kv_head, m.n_hidden, m.vocab, m.theta))
    print('tokens (%d): %s' % (len(ids), ' '.join(str(i) for i in ids)))
    ref = forward(m, ids)[-1]
    order = np.argsort(-ref)[: a.top]
    std, amax = float(ref.std()), float(np.abs(ref).max())
    print('oracle top-1: %d %s  logit scale: std %.4f  max |logit| %.4f' % (order[0], _piece(m, order[0]), std, amax))
    if not a.kvlab:
        print('%6s  %-20s %12s' % ('id', 'token', 'oracle'))
        for i in order:
            print('%6d  %-20s %12.5f' % (i, _piece(m, i), ref[i]))
        return 0
    if a.prompt is None:
        sys.exit('--kvlab needs --prompt (infer takes text)')
    got = run_kvlab(a.kvlab, a.model, a.prompt)
    if got.shape != ref.shape:
        sys.exit('kvlab wrote %d logits, the model has %d' % (got.size, ref.size))
    d = np.abs(got - ref)
    top_k = int(np.argmax(got))
    print('kvlab  top-1: %d %s' % (top_k, _piece(m, top_k)))
    print('max |dlogit| %.6f (at %d)  mean |dlogit| %.6f  max/std %.2e' % (d.max(), int(d.argmax()), d.mean(),
                                                                            d.max() / std))
    print('%6s  %-20s %12s %12s %10s' % ('id', 'token', 'oracle', 'kvlab', 'diff'))
    for i in order:
        print('%6d  %-20s %12.5f %12.5f %10.2e' % (i, _piece(m, i), ref[i], got[i], got[i] - ref[i]))
    ok = top_k == int(order[0]) and d.max() <= a.tol * std
    print('agreement: %s' % ('yes' if ok else 'NO'))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
