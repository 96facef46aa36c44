#!/usr/bin/env python3
"""Writes tests/data/bpe/, the fixture of tests/test_bpe.c: small byte-level BPEs trained with HF `tokenizers`
and the ids the reference gives for a varied text.

One vocabulary per pre-tokenizer, each in its own folder (smollm/, gpt2/), trained with that pre-tokenizer
to 1500 tokens on data/tinyshakespeare.txt, the varied sample of scripts/bpe_check.py and synthetic lines
(numbers, whitespace runs), with control tokens, one of them a prefix of another (the longest must match):
  smollm  as SmolLM2's: Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
          use_regex=True)], every byte in the initial alphabet
  gpt2    the ByteLevel part alone (so numbers merge), only the bytes of the corpus in the alphabet (so bytes
          without a token are tested: SmolLM2's vocabulary lacks 21 too)
The reference is rebuilt from the written files alone (bpe_check.reference), as the C side sees them. Each
folder holds:

  vocab.txt types.txt merges.txt meta.txt   the vocabulary (formats: scripts/bpe_check.py)
  text.txt, ids.txt                         a Shakespeare excerpt and the varied sample (UTF-8); its ids
  bad.bin, ids-bad.txt                      text with invalid UTF-8 (truncated, stray, overlong, surrogate
                                            ...) and its ids, every invalid byte a symbol of its own (a
                                            private-use character, neither letter, number nor space, for
                                            the reference's pre-tokenizer; its own byte for the merges)

Usage: python3 scripts/make-bpe-fixture.py   (deterministic for one `tokenizers` version; 0.23.3 wrote it)
"""
import codecs
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe_check  # noqa: E402

OUT = os.path.join(bpe_check.ROOT, 'tests', 'data', 'bpe')
SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|im_start|>assistant']
PUA = 0xF0000  # invalid byte b stands as U+F0000 + b (category Co) for the reference's pre-tokenizer
BAD = (b"valid \xff\xfe stray, \xe4\xb8 truncated \xe4\xb8\xad ok, \xc3 lone lead, x\x80\x80y "
       b"conts, \xed\xa0\x80 surrogate, \xf4\x90\x80\x80 too big, \xc0\xaf overlong, \xe0\x80\xaf overlong3, "
       b"12\xff34 digits, word\xffword, \xf0\x9f\x98 emoji cut, \xf0\x9f\x98\x80 emoji, a \xfe  \xff\n"
       b"  \xe2\x82 euro cut \xe2\x82\xac euro, I\xff'll, '\xffs\t\xff\t overlong letters: ab\xe0\x81\x81cd "
       b"x\xf0\x80\x81\x81y w\xc1\x81w, cesu \xed\xa0\xbd\xed\xb8\x80, end\xc3")


def gpt2_byte_map():
    """GPT-2's byte-to-unicode table (checked against the reference's ByteLevel below)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def synthetic():
    """Numbers, whitespace runs, code and other scripts, so that such merges exist in a small vocabulary."""
    rng = random.Random(1)
    words = bpe_check.VARIED.split()
    out = []
    for i in range(3000):
        n = rng.choice([rng.randrange(10), rng.randrange(100), rng.randrange(2000), rng.randrange(10 ** 6)])
        ws = rng.choice([' ', '  ', '   ', '\t', '\n', '\n\n', ' \n', '    ', '\r\n'])
        out.append('%s%s%d%s%s %s=%d;' % (rng.choice(words), ws, n, ws, rng.choice(words), rng.choice(words), i))
    return out


def train(corpus, pre):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == 'smollm':
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    # smollm: every byte has a token; gpt2: only the bytes of the corpus, as in SmolLM2's vocabulary (which
    # lacks 21): the reference drops a byte with no token, and so must we
    alphabet = pre_tokenizers.ByteLevel.alphabet() if pre == 'smollm' else []
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=alphabet)
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())['model']
    vocab = model['vocab']
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    if None in tokens:
        sys.exit('make-bpe-fixture: the trained ids are not 0..n-1')
    merges = [m if isinstance(m, str) else ' '.join(m) for m in model['merges']]
    return tok, tokens, merges


def encode_bytes(tok, data):
    """The reference's ids for any bytes: the pre-tokenizer on the text with every invalid byte made a
    private-use character, then the BPE model on each piece's original bytes."""
    codecs.register_error('bpe_pua', lambda e: (''.join(chr(PUA + b) for b in e.object[e.start:e.end]), e.end))
    text = data.decode('utf-8', errors='bpe_pua')
    byte_map = gpt2_byte_map()
    ids = []
    for mapped, (start, end) in tok.pre_tokenizer.pre_tokenize_str(text):
        raw = b''.join(bytes([ord(c) - PUA]) if ord(c) >= PUA else c.encode('utf-8') for c in text[start:end])
        ours = ''.join(byte_map[b] for b in raw)
        if not any(ord(c) >= PUA for c in text[start:end]) and ours != mapped:
            sys.exit('make-bpe-fixture: the byte map disagrees with ByteLevel on %r' % text[start:end])
        ids += [t.id for t in tok.model.tokenize(ours)]
    return ids


def main():
    with open(os.path.join(bpe_check.ROOT, 'data', 'tinyshakespeare.txt'), encoding='utf-8', newline='') as f:
        shakespeare = f.read()
    corpus = shakespeare.split('\n\n') + [bpe_check.VARIED] * 20 + synthetic()
    text = shakespeare[200000:201500] + bpe_check.VARIED
    plain = text.replace('<|', '< |')  # no control tokens: encode_bytes knows nothing of them
    total = 0
    for pre in ('smollm', 'gpt2'):
        out = os.path.join(OUT, pre)
        trained, tokens, merges = train(corpus, pre)
        types = [bpe_check.CONTROL if t in SPECIALS else 1 for t in tokens]
        bpe_check.write_vocab(out, tokens, types, merges, dict(pre=pre, bos=-1, eos=0, add_bos=0))
        ref = bpe_check.reference(tokens, types, merges, pre)
        ids = ref.encode(text, add_special_tokens=False).ids
        if ids != trained.encode(text, add_special_tokens=False).ids:
            sys.exit('make-bpe-fixture: the rebuilt reference disagrees with the trained tokenizer')
        if encode_bytes(ref, plain.encode('utf-8')) != ref.encode(plain, add_special_tokens=False).ids:
            sys.exit('make-bpe-fixture: encode_bytes disagrees with the reference on valid text')
        bad = encode_bytes(ref, BAD)
        with open(os.path.join(out, 'text.txt'), 'wb') as f:
            f.write(text.encode('utf-8'))
        with open(os.path.join(out, 'bad.bin'), 'wb') as f:
            f.write(BAD)
        bpe_check.write_ids(os.path.join(out, 'ids.txt'), ids)
        bpe_check.write_ids(os.path.join(out, 'ids-bad.txt'), bad)
        total += sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print('%s: %d tokens, %d merges; text %d bytes -> %d ids; bad.bin %d bytes -> %d ids'
              % (pre, len(tokens), len(merges), len(text.encode('utf-8')), len(ids), len(BAD), len(bad)))
    print('wrote %s: %d bytes in all' % (OUT, total))


if __name__ == '__main__':
    if len(sys.argv) > 1:  # it takes no arguments: --help (or anything) prints what it does and writes nothing
        print(__doc__)
        sys.exit(0 if sys.argv[1] in ('-h', '--help') else 2)
    main()
