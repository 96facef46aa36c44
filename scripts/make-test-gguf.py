#!/usr/bin/env python3
"""Writes the GGUF fixtures of tests/test_gguf.c (tests/data/gguf/) and the gguf fuzz seeds
(tests/fuzz/corpus/gguf/), deterministically (fixed seeds): rerun it after changing it, and commit the output.

Each fixture is a small random llama model written with the `gguf` package's GGUFWriter, with a tiny byte-level
BPE (3 control tokens, the 256 byte tokens in GPT-2's byte-to-unicode form, merges learnt from a short text)
stored as tokenizer.ggml.* keys. The weights are made in the Hugging Face convention and Q and K are permuted
exactly as llama.cpp's convert_hf_to_gguf does before writing (gguf_oracle.permute); the K-quant fixture holds
random valid Q4_K/Q6_K block bytes instead (the package cannot quantize to them), which the oracle reads the
same way. Beside each NAME.gguf:
  NAME.ids                 the ids of ENCODE by the oracle's `tokenizers` BPE built from the file, as text
  NAME.logits.f32          the oracle's logits (scripts/gguf_oracle.py) for TOKENS, (len(TOKENS), V) float32
  NAME.TENSOR.f32          the first (up to) 4096 elements of TENSOR as gguf.quants.dequantize gives them
The tensor types per fixture:
  tiny-f32     everything F32                                   (V 300, C 64, 4/2 heads, H 96, 2 layers)
  tiny-f16     matrices F16 and BF16, norms F32                 (same shape)
  tiny-q       matrices Q8_0, Q4_0 and Q4_1, norms F32          (same shape)
  tiny-kquant  matrices Q4_K and Q6_K, norms F32               (V 300, C 256, 4/2 heads, H 256, 1 layer)
The fuzz seeds are micro models (V 259: 3 control tokens and the bytes, no merges; 1 layer) in F32 (C 16) and
Q4_0 (C 32), and a few broken copies of the Q4_0 one (truncated, version 1, a huge key count, a string length
past the end, an untied output.weight).
"""
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402

import gguf_oracle  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
OUT = os.path.join(ROOT, 'tests', 'data', 'gguf')
FUZZ = os.path.join(ROOT, 'tests', 'fuzz', 'corpus', 'gguf')
TOKENS = [1, 40, 72, 299, 5, 258, 259, 2, 100, 17, 0, 150]  # also in tests/test_gguf.c
PREFIX = 4096
MICRO = (259, 32, 2, 1, 32, 1)  # the fuzz seeds' shape: V, C, heads, kv heads, hidden, layers
SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
# Encoded by the oracle's `tokenizers` BPE into NAME.ids (tests/test_gguf.c encodes it with kvlab's BPE).
ENCODE = '<|im_start|>the quick fox 12345 runs over\n\nthe  dog!<|im_end|> 678 the end'  # also in test_gguf.c
TEXT = ('the quick brown fox jumps over the lazy dog. the dog sleeps and the fox runs; then the fox sleeps '
        'and the dog runs over the hill. 12345 foxes, 678 dogs! the end of the story is near, then there is '
        'another story about the other fox and the other dog.') * 3


def byte_symbols():
    """GPT-2's byte-to-unicode table: printable bytes stand for themselves, the rest map from U+0100 on."""
    keep = list(range(ord('!'), ord('~') + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return [table[b] for b in range(256)]


def learn_merges(n_merges):
    """A few BPE merges learnt from TEXT (words split at spaces, GPT-2 style: a space joins the next word)."""
    sym = byte_symbols()
    words = {}
    for i, w in enumerate(TEXT.split(' ')):
        w = (' ' if i else '') + w
        key = tuple(sym[b] for b in w.encode())
        words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(n_merges):
        pairs = {}
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    return merges


def vocabulary(n_merges):
    merges = learn_merges(n_merges)
    tokens = SPECIALS + byte_symbols() + [a + b for a, b in merges]
    assert len(set(tokens)) == len(tokens)
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, ['%s %s' % m for m in merges]


def write_model(path, shape, types, rng, pre='gpt2', n_merges=41, extra_tensor=None):
    """A random llama model. types maps a tensor role (wte, wq, ...) to its ggml type (norms are F32)."""
    V, C, NH, NKV, H, L = shape
    hd = C // NH
    tokens, ttypes, merges = vocabulary(n_merges)
    assert len(tokens) == V, (len(tokens), V)
    w = gguf.GGUFWriter(path, 'llama')
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(C)
    w.add_feed_forward_length(H)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_freq_base(10000.0 if C < 256 else 50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model('gpt2')
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    def put(name, hf, role):
        """hf: the float weight (out, in) in HF order, already permuted for Q/K."""
        t = types.get(role, Q.F32)
        if t == Q.F32:
            w.add_tensor(name, hf.astype(np.float32))
        elif t == Q.F16:
            w.add_tensor(name, hf.astype(np.float16))
        elif t in (Q.Q4_K, Q.Q6_K):
            w.add_tensor(name, kquant_blocks(hf.shape, t, rng, scale=2.0 if role == 'wte' else 0.25),
                         raw_dtype=t)
        else:
            w.add_tensor(name, gguf.quants.quantize(hf.astype(np.float32), t), raw_dtype=t)

    def mat(rows, cols, std):
        return rng.normal(0.0, std, size=(rows, cols))

    def gain(n):
        return 1.0 + 0.1 * rng.normal(size=n)

    put('token_embd.weight', mat(V, C, 1.0), 'wte')
    for l in range(L):
        p = 'blk.%d.' % l
        put(p + 'attn_norm.weight', gain(C), 'norm')
        put(p + 'attn_q.weight', gguf_oracle.permute(mat(C, C, 0.1), NH), 'wq')
        put(p + 'attn_k.weight', gguf_oracle.permute(mat(NKV * hd, C, 0.1), NKV), 'wk')
        put(p + 'attn_v.weight', mat(NKV * hd, C, 0.1), 'wv')
        put(p + 'attn_output.weight', mat(C, C, 0.1), 'wo')
        put(p + 'ffn_norm.weight', gain(C), 'norm')
        put(p + 'ffn_gate.weight', mat(H, C, 0.1), 'w1')
        put(p + 'ffn_up.weight', mat(H, C, 0.1), 'w3')
        put(p + 'ffn_down.weight', mat(C, H, 0.1), 'w2')
    put('output_norm.weight', gain(C), 'norm')
    if extra_tensor:
        w.add_tensor(extra_tensor[0], extra_tensor[1], raw_dtype=extra_tensor[2])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def f16_bytes(x):
    return np.array([x], dtype=np.float16).view(np.uint8)


def kquant_blocks(shape, t, rng, scale):
    """Random valid Q4_K / Q6_K blocks for a (rows, cols) weight: sane f16 scales, random quants; values of
    roughly +-scale. Returns the bytes as (rows, cols / 256 * block bytes) uint8."""
    rows, cols = shape
    nb = rows * cols // 256
    if t == Q.Q4_K:
        b = rng.integers(0, 256, size=(nb, 144), dtype=np.uint8)
        d = (scale / (63 * 15)) * rng.uniform(0.5, 1.5, size=nb)
        dmin = (scale / 63) * rng.uniform(0.5, 1.5, size=nb)
        b[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(nb, 2)
        b[:, 2:4] = dmin.astype(np.float16).view(np.uint8).reshape(nb, 2)
    else:
        b = rng.integers(0, 256, size=(nb, 210), dtype=np.uint8)
        d = (scale / (128 * 32)) * rng.uniform(0.5, 1.5, size=nb)
        b[:, 208:210] = d.astype(np.float16).view(np.uint8).reshape(nb, 2)
    return b.reshape(rows, -1)


def write_expected(name, tensors):
    path = os.path.join(OUT, name + '.gguf')
    r = gguf.GGUFReader(path)
    by = {t.name: t for t in r.tensors}
    for tn in tensors:
        t = by[tn]
        ref = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)
        ref[:PREFIX].astype('<f4').tofile(os.path.join(OUT, '%s.%s.f32' % (name, tn)))
    m = gguf_oracle.Model(path)
    with open(os.path.join(OUT, name + '.ids'), 'w') as f:
        f.write(' '.join(str(i) for i in m.encode(ENCODE)) + '\n')
    logits = gguf_oracle.forward(m, TOKENS)
    logits.astype('<f4').tofile(os.path.join(OUT, name + '.logits.f32'))
    print('%-12s %7d bytes  logits std %.3f  max |logit| %.3f  tensors %s' %
          (name, os.path.getsize(path), logits.std(), np.abs(logits).max(), ' '.join(
              '%s:%s' % (tn, by[tn].tensor_type.name) for tn in tensors)))


def fuzz_seeds(rng):
    os.makedirs(FUZZ, exist_ok=True)
    for f in os.listdir(FUZZ):
        os.remove(os.path.join(FUZZ, f))
    q4 = {r: Q.Q4_0 for r in ('wte', 'wq', 'wk', 'wv', 'wo', 'w1', 'w3', 'w2')}
    write_model(os.path.join(FUZZ, 'micro-f32'), (259, 16, 2, 1, 16, 1), {}, rng, n_merges=0)
    good_path = os.path.join(FUZZ, 'micro-q4')
    write_model(good_path, MICRO, q4, rng, n_merges=0)
    good = open(good_path, 'rb').read()

    def save(tag, data):
        with open(os.path.join(FUZZ, tag), 'wb') as f:
            f.write(data)

    save('broken-truncated-header', good[:40])
    save('broken-truncated-tensors', good[: len(good) // 2])
    save('broken-version1', good[:4] + struct.pack('<I', 1) + good[8:])
    save('broken-kv-count', good[:16] + struct.pack('<Q', 1 << 62) + good[24:])
    # the first key's string length pointing past the end
    save('broken-string-length', good[:24] + struct.pack('<Q', len(good)) + good[32:])
    # an untied output head
    head = gguf.quants.quantize(rng.normal(size=(MICRO[0], MICRO[1])).astype(np.float32), Q.Q4_0)
    write_model(os.path.join(FUZZ, 'broken-output-head'), MICRO, q4, rng, n_merges=0,
                extra_tensor=('output.weight', head, Q.Q4_0))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240611)
    small = (300, 64, 4, 2, 96, 2)
    mats = ('wte', 'wq', 'wk', 'wv', 'wo', 'w1', 'w3', 'w2')
    fixtures = [
        ('tiny-f32', small, {}, ['blk.0.attn_q.weight']),
        ('tiny-f16', small, {'wte': Q.BF16, 'wq': Q.F16, 'wk': Q.BF16, 'wv': Q.F16, 'wo': Q.BF16, 'w1': Q.F16,
                             'w3': Q.BF16, 'w2': Q.F16},
         ['blk.0.attn_q.weight', 'blk.0.attn_k.weight']),
        ('tiny-q', small, {'wte': Q.Q8_0, 'wq': Q.Q8_0, 'wk': Q.Q4_0, 'wv': Q.Q4_1, 'wo': Q.Q4_0, 'w1': Q.Q4_1,
                           'w3': Q.Q8_0, 'w2': Q.Q4_1},
         ['blk.0.attn_q.weight', 'blk.0.attn_k.weight', 'blk.0.attn_v.weight']),
        ('tiny-kquant', (300, 256, 4, 2, 256, 1),
         {'wte': Q.Q6_K, 'wq': Q.Q4_K, 'wk': Q.Q4_K, 'wv': Q.Q6_K, 'wo': Q.Q4_K, 'w1': Q.Q4_K, 'w3': Q.Q6_K,
          'w2': Q.Q6_K},
         ['blk.0.attn_k.weight', 'blk.0.attn_v.weight']),
    ]
    assert all(r in mats for _, _, t, _ in fixtures for r in t)
    for name, shape, types, expected in fixtures:
        write_model(os.path.join(OUT, name + '.gguf'), shape, types, rng, pre='smollm' if name == 'tiny-q' else 'gpt2')
        write_expected(name, expected)
    fuzz_seeds(rng)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    fz = sum(os.path.getsize(os.path.join(FUZZ, f)) for f in os.listdir(FUZZ))
    print('tests/data/gguf: %d bytes; tests/fuzz/corpus/gguf: %d bytes' % (total, fz))


if __name__ == '__main__':
    if len(sys.argv) > 1:  # it takes no arguments: --help (or anything) prints what it does and writes nothing
        print(__doc__)
        sys.exit(0 if sys.argv[1] in ('-h', '--help') else 2)
    main()
