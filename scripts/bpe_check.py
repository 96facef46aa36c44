#!/usr/bin/env python3
"""Checks kvlab's byte-level BPE (data/bpe.c) against the reference, HF `tokenizers`, on a real vocabulary.

Reads tokenizer.ggml.{tokens,token_type,merges,pre,bos_token_id,eos_token_id,add_bos_token} from a GGUF file
(the `gguf` package), builds the reference tokenizer from them (models.BPE from vocab and merges, the
pre-tokenizer the file names, every control token added as a special token), encodes a large varied text
(the whole of data/tinyshakespeare.txt and the varied sample below) and writes, for the C test
(tests/test_bpe.c, `bpe/real_vocabulary`, which runs when the folder exists):

  OUT/vocab.txt   one token per line, in id order      OUT/types.txt   its GGUF token type, one per line
  OUT/merges.txt  one merge "a b" per line, rank order  OUT/meta.txt    pre, bos, eos, add_bos (key value)
  OUT/text.txt    the text (raw bytes)                  OUT/ids.txt     the reference's ids, one per line

Usage: python3 scripts/bpe_check.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--out models/bpe-check]
Then: build/tests --filter 'bpe/*'

The reference builder and the varied sample are shared with scripts/make-bpe-fixture.py.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTROL = 3  # GGUF token type

# Scripts, emoji, digits, whitespace runs, code and contractions: what the pre-tokenizers must split right.
VARIED = (
    "Hello, world! I'll say it: don'T, we're, they've, she'd, I'm, it's, you'll, ''quoted'' O'Neil's 'tis\n"
    "Numbers: 0 7 42 1234567890 3.14159 -273.15 1e-9 0x1F 2024-06-01 12:30:45 $1,000,000.00 50% #1\n"
    "Unicode numbers: \u0661\u0662\u0663 \u0967\u0968 \u00bd \u00b2 \u2167 \u216b \u2460 \u4e09\u5341\n"
    "Accents: caf\u00e9 na\u00efve r\u00e9sum\u00e9 Stra\u00dfe \u00e5ngstr\u00f6m cafe\u0301 (combining) "
    "\u00c9COLE Fran\u00e7ois \u0141\u00f3d\u017a \u0218tefan\n"
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442: \u041f\u0440\u0438\u0432\u0435"
    "\u0442, \u043c\u0438\u0440! \u0415\u0451\u0436 \u2014 \u0434\u0430.\n"
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac: \u03ba\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 "
    "\u03ba\u03cc\u03c3\u03bc\u03b5\n"
    "\u4e2d\u6587\u6587\u672c\uff0c\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002\ud55c\uad6d\uc5b4 "
    "\ud14d\uc2a4\ud2b8\u3000\u5168\u89d2\u3000\u7a7a\u683c\n"
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd "
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u0928\u092e\u0938\u094d\u0924\u0947 \u0e44\u0e17\u0e22\n"
    "Emoji: \U0001f600 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1eb\U0001f1f7 "
    "\u2764\ufe0f \U0001f680\U0001f680\U0001f680 a\U0001f600b\n"
    "Whitespace:   three spaces,\ttab,\t\ttwo tabs,  \t mixed,\u00a0nbsp,\u2003em space,\u2028line sep\n"
    "trailing spaces   \n"
    "\n\n\n"
    "    indented four\n"
    "\t\tindented tabs\r\n"
    "windows line\r\n \n  \n"
    "def f(x, y=2):\n    return {'a': [x**2, y // 3], \"b\": x != y}  # comment\n"
    "int main(void) { for (int i = 0; i < n; i++) a[i] += b[i] * 2; return 0; }\n"
    "if (a && b || !c) { x->y = &z; } /* ok */ $var @decorator `tick` ~tilde ^caret\n"
    "https://example.com/path?q=1&r=two#frag user@example.org C:\\Windows\\path\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|><|endoftext|>"
    "<|endoftext|><|im_sta partial <|im_start|>x <|im_start|>assistant <|im_startx|> <||> "
    "text<|im_end|>text\n"
    "ALL CAPS SHOUTING!!! ... ??? --- *** ___ === +++ ((())) [[[]]] {{{}}} \"\"\" ''' ,,,\n"
    "mixed123abc456 abc 123 a1b2c3 ab12cd 1,234 1.5e10 x  1 total:   42\t\t7 \n\n2 (  3) [ 4 ]\n"
    "control bytes: \x04 a\x04b !\x04! --\x13-- \x1d\x7f\x00 \x1b[0m \x0b\x0c form feed\n"
    "end without newline   "
)


def reference(tokens, types, merges, pre):
    """The HF `tokenizers` reference for a GGUF vocabulary."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        sys.exit('bpe_check: the vocabulary has duplicate tokens')
    pairs = []
    for m in merges:
        parts = m.split(' ')
        if len(parts) != 2:
            sys.exit('bpe_check: merge %r is not "a b"' % m)
        pairs.append((parts[0], parts[1]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == 'smollm':
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ('gpt2', 'default'):
        tok.pre_tokenizer = byte_level
    else:
        sys.exit('bpe_check: no reference for pre-tokenizer %r' % pre)
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == CONTROL]
    tok.add_special_tokens(special)
    return tok


def write_vocab(out, tokens, types, merges, meta):
    """vocab.txt, types.txt, merges.txt, meta.txt into folder out."""
    for t in tokens + merges:
        if '\n' in t or '\r' in t:
            sys.exit('bpe_check: %r holds a line break: the line-per-token files cannot hold it' % t)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'vocab.txt'), 'w', encoding='utf-8', newline='\n') as f:
        f.write(''.join(t + '\n' for t in tokens))
    with open(os.path.join(out, 'types.txt'), 'w') as f:
        f.write(''.join('%d\n' % t for t in types))
    with open(os.path.join(out, 'merges.txt'), 'w', encoding='utf-8', newline='\n') as f:
        f.write(''.join(m + '\n' for m in merges))
    with open(os.path.join(out, 'meta.txt'), 'w') as f:
        f.write(''.join('%s %s\n' % kv for kv in meta.items()))


def write_ids(path, ids):
    with open(path, 'w') as f:
        f.write(''.join('%d\n' % i for i in ids))


def read_gguf(path):
    import gguf
    r = gguf.GGUFReader(path)

    def field(key, default=None):
        f = r.fields.get(key)
        if f is None:
            return default
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode('utf-8') for i in f.data]
            return [int(f.parts[i][0]) for i in f.data]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode('utf-8')
        return int(f.parts[f.data[0]][0])

    tokens = field('tokenizer.ggml.tokens')
    if tokens is None:
        sys.exit('bpe_check: %s has no tokenizer.ggml.tokens' % path)
    return dict(tokens=tokens, types=field('tokenizer.ggml.token_type', [1] * len(tokens)),
                merges=field('tokenizer.ggml.merges', []), pre=field('tokenizer.ggml.pre', 'gpt2'),
                bos=field('tokenizer.ggml.bos_token_id', -1), eos=field('tokenizer.ggml.eos_token_id', -1),
                add_bos=field('tokenizer.ggml.add_bos_token', 0))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', required=True, help='a GGUF file with a byte-level BPE vocabulary')
    p.add_argument('--out', default=os.path.join(ROOT, 'models', 'bpe-check'),
                   help="where to write the vocabulary, text and ids (default models/bpe-check, the folder the "
                        "bpe/real_vocabulary test reads)")
    args = p.parse_args()
    v = read_gguf(args.model)
    tok = reference(v['tokens'], v['types'], v['merges'], v['pre'])
    with open(os.path.join(ROOT, 'data', 'tinyshakespeare.txt'), encoding='utf-8', newline='') as f:
        text = f.read() + '\n' + VARIED
    ids = tok.encode(text, add_special_tokens=False).ids
    if v['add_bos']:
        ids = [v['bos']] + ids
    meta = dict(pre=v['pre'], bos=v['bos'], eos=v['eos'], add_bos=int(bool(v['add_bos'])))
    write_vocab(args.out, v['tokens'], v['types'], v['merges'], meta)
    with open(os.path.join(args.out, 'text.txt'), 'wb') as f:
        f.write(text.encode('utf-8'))
    write_ids(os.path.join(args.out, 'ids.txt'), ids)
    print('bpe_check: %d tokens, %d merges, pre %s; text %d bytes -> %d ids; wrote %s'
          % (len(v['tokens']), len(v['merges']), v['pre'], len(text.encode('utf-8')), len(ids), args.out))
    if os.path.abspath(args.out) == os.path.join(ROOT, 'models', 'bpe-check'):
        print("now run: build/tests --filter 'bpe/*'")
    else:
        print("the bpe/real_vocabulary test reads models/bpe-check only: copy %s there to run it" % args.out)


if __name__ == '__main__':
    main()
