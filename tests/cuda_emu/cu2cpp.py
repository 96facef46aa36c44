#!/usr/bin/env python3
"""Rewrites a CUDA source (.cu) into C++ for g++ and the CUDA emulator (tests/cuda_emu/cuda_emu.h).

    cu2cpp.py SOURCE.cu OUT.cpp

Three rewrites, none of which adds or removes a line (and a #line directive names SOURCE.cu, so compiler
messages and __FILE__/__LINE__ point at the .cu source):
  kernel<<<grid, block[, shmem[, stream]]>>>(args)  ->  cuemu::launcher(kernel, "kernel", __FILE__, __LINE__,
                                                          bound, grid, block[, shmem[, stream]])(args)
    (bound: the maximum threads of the kernel's __launch_bounds__ when this file declares it, else 0)
  extern __shared__ T name[];                        ->  T *const name = CUEMU_DYNAMIC_SHARED(T);
  __shared__ T name[N]...;  (in a function)          ->  CUEMU_SHARED(T, [N]..., name);
Everything else (qualifiers, built-ins, intrinsics, the runtime API) is cuda_emu.h's. Comments and string
literals are left alone. A form this script does not know (a __shared__ at file scope, several declarators in
one __shared__ declaration) is an error naming the line.
"""

import re
import sys


def mask_text(src):
    """src with comments and string/char literals blanked (newlines kept): offsets stay the same."""
    out = list(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith('//', i):
            j = src.find('\n', i)
            j = n if j < 0 else j
        elif src.startswith('/*', i):
            j = src.find('*/', i + 2)
            j = n if j < 0 else j + 2
        elif c in '"\'':
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == '\\' else 1
            j += 1
            if c == "'" and i > 0 and (src[i - 1].isalnum()):  # a digit separator such as 1'000
                i += 1
                continue
        else:
            i += 1
            continue
        for k in range(i, min(j, n)):
            if out[k] != '\n':
                out[k] = ' '
        i = j
    return ''.join(out)


def line_of(src, pos):
    return src.count('\n', 0, pos) + 1


class RewriteError(Exception):
    pass


def kernel_start(masked, pos):
    """The start of the kernel expression that ends just before pos (an identifier, maybe qualified with ::,
    maybe with template arguments <...>)."""
    i = pos
    while i > 0 and masked[i - 1].isspace():
        i -= 1
    if i > 0 and masked[i - 1] == '>':  # template arguments
        depth = 0
        while i > 0:
            i -= 1
            if masked[i] == '>':
                depth += 1
            elif masked[i] == '<':
                depth -= 1
                if depth == 0:
                    break
        while i > 0 and masked[i - 1].isspace():
            i -= 1
    while i > 0 and (masked[i - 1].isalnum() or masked[i - 1] in '_:'):
        i -= 1
    return i


def balanced(masked, open_pos):
    """The index just past the parenthesis that closes the one at open_pos."""
    depth = 0
    for i in range(open_pos, len(masked)):
        if masked[i] == '(':
            depth += 1
        elif masked[i] == ')':
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def launch_bounds(src, masked):
    """{kernel name: the maximum threads of its __launch_bounds__(max[, min blocks]) (source text)}."""
    bounds = {}
    for m in re.finditer(r'__launch_bounds__\s*\(', masked):
        end = balanced(masked, m.end() - 1)
        if end < 0:
            continue
        args, depth, cut = masked[m.end():end - 1], 0, None
        for i, c in enumerate(args):
            depth += c == '('
            depth -= c == ')'
            if c == ',' and depth == 0:
                cut = i
                break
        expr = src[m.end():m.end() + (cut if cut is not None else len(args))].strip()
        name = re.match(r'\s*([A-Za-z_]\w*)\s*\(', masked[end:])
        if name:
            bounds[name.group(1)] = expr
    return bounds


def launch_edits(src, masked, path):
    edits = []  # (start, end, replacement)
    bounds = launch_bounds(src, masked)
    for m in re.finditer(r'<<<', masked):
        start = kernel_start(masked, m.start())
        kernel = src[start:m.start()].strip()
        if not re.match(r'^[A-Za-z_][\w:]*\s*(<.*>)?$', kernel, re.S):
            raise RewriteError('%s:%d: cannot tell the kernel of this launch' % (path, line_of(src, m.start())))
        close = masked.find('>>>', m.end())
        if close < 0:
            raise RewriteError('%s:%d: <<< without >>>' % (path, line_of(src, m.start())))
        config = src[m.end():close]
        name = re.sub(r'\s+', '', kernel).replace('\\', '\\\\').replace('"', '\\"')
        base = re.match(r'[\w:]+', kernel).group(0).split('::')[-1]
        limit = '(%s)' % bounds[base] if base in bounds else '0'
        edits.append((start, close + 3, 'cuemu::launcher(%s, "%s", __FILE__, __LINE__, %s,%s)'
                      % (kernel, name, limit, config)))
    return edits


def brace_depth(masked, pos):
    return masked.count('{', 0, pos) - masked.count('}', 0, pos)


def shared_edits(src, masked, path):
    edits = []
    dyn = re.compile(r'extern\s+__shared__\s+([^;]*?)\s*\b(\w+)\s*\[\s*\]\s*;')
    stat = re.compile(r'__shared__\s+([^;]*?)\s*\b(\w+)\s*((?:\[[^\]\[;]*\]\s*)*);')
    taken = []
    for m in dyn.finditer(masked):
        edits.append((m.start(), m.end(), '%s *const %s = CUEMU_DYNAMIC_SHARED(%s);' % (
            src[m.start(1):m.end(1)], m.group(2), src[m.start(1):m.end(1)])))
        taken.append((m.start(), m.end()))
    for m in stat.finditer(masked):
        if any(a <= m.start() < b for a, b in taken):
            continue
        line = line_of(src, m.start())
        if ',' in m.group(1) or ',' in m.group(0).split('__shared__', 1)[1].split('[')[0]:
            raise RewriteError('%s:%d: one declarator per __shared__ declaration, please (the emulator\'s '
                               'rewrite)' % (path, line))
        if brace_depth(masked, m.start()) <= 0:
            raise RewriteError('%s:%d: a __shared__ variable at file scope: the emulator supports them inside '
                               'functions only' % (path, line))
        ctype = src[m.start(1):m.end(1)].strip()
        dims = re.sub(r'\s+', '', src[m.start(3):m.end(3)])
        edits.append((m.start(), m.end(), 'CUEMU_SHARED(%s, %s, %s);' % (ctype, dims, m.group(2))))
    return edits


def rewrite(src, path):
    masked = mask_text(src)
    edits = sorted(launch_edits(src, masked, path) + shared_edits(src, masked, path))
    out, at = [], 0
    for start, end, text in edits:
        if start < at:
            raise RewriteError('%s:%d: overlapping rewrites' % (path, line_of(src, start)))
        # keep the line structure: the newlines of the replaced text follow the replacement
        out.append(src[at:start])
        out.append(text.replace('\n', ' ') if src.count('\n', start, end) == 0 else text)
        at = end
    out.append(src[at:])
    body = ''.join(out)
    if body.count('\n') != src.count('\n'):
        raise RewriteError('%s: the rewrite changed the number of lines' % path)
    return '#include "cuda_emu.h"\n#line 1 "%s"\n%s' % (path, body)


def main(argv):
    if len(argv) != 3:
        print('usage: cu2cpp.py SOURCE.cu OUT.cpp', file=sys.stderr)
        return 2
    src_path, out_path = argv[1], argv[2]
    try:
        with open(src_path) as f:
            src = f.read()
        text = rewrite(src, src_path)
    except (OSError, RewriteError) as e:
        print('cu2cpp: %s' % e, file=sys.stderr)
        return 1
    with open(out_path + '.tmp', 'w') as f:
        f.write(text)
    import os
    os.replace(out_path + '.tmp', out_path)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
