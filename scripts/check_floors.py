#!/usr/bin/env python3
"""Checks that kvlab's dependency arrows point one way (docs: DESIGN.md, "Layout"). Standard library only.

Two rules, one line per violation on stdout, exit status 1 if there is any (0 when clean):

1. includes: a source file (.c .h .cu .cuh) may `#include "../X/..."` only when folder X sits on a lower floor
   than its own folder. Floors: common 0; attention 1; layers, data 2; checkpoints, kv 3; decode 4; the programs
   train, infer, serve, bench 5. A program may not include another program's folder (same floor), with one
   documented exception below.
2. headers: a header declares only what its own folder defines. A function declared in X/foo.h but defined
   (non-static, in a .c or .cu file) only in another folder is flagged. The parse is deliberately simple
   (comments, strings and preprocessor lines dropped; declarations and definitions at brace depth 0), which
   is enough for this code base's style; a name defined nowhere (e.g. CUDA code in a CPU-only tree) is skipped.

Usage: python3 scripts/check_floors.py [ROOT]   (ROOT defaults to the repository holding this script)
"""
import os
import re
import sys

FLOORS = {
    'common': 0,
    'attention': 1,
    'layers': 2,
    'data': 2,
    'checkpoints': 3,
    'kv': 3,
    'decode': 4,
    'train': 5,
    'infer': 5,
    'serve': 5,
    'bench': 5,
}

# (including folder, included path): allowed although the floors say no, and why.
EXCEPTIONS = {
    # bench measures the training presets' shapes; the presets are plain data (train/presets.c) that bench
    # reads, not trainer logic. Moving them below the programs would be the clean fix if more programs need them.
    ('bench', 'train/presets.h'): 'bench reads the training presets (plain data)',
}

SOURCE_EXTS = ('.c', '.h', '.cu', '.cuh')
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"\.\./([^/"]+)/([^"]*)"')
IDENT_CALL_RE = re.compile(r'\b([A-Za-z_]\w*)\s*\(')
NOT_FUNCTIONS = {'if', 'for', 'while', 'switch', 'return', 'sizeof', 'defined', '__attribute__', '__declspec',
                 '_Alignas', 'alignas', 'decltype', '__launch_bounds__'}


def source_files(root):
    """Yields (folder, path relative to root) for every source file under the floor folders."""
    for folder in sorted(FLOORS):
        top = os.path.join(root, folder)
        if not os.path.isdir(top):
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(SOURCE_EXTS):
                    yield folder, os.path.relpath(os.path.join(dirpath, name), root)


def check_includes(root, files):
    """Rule 1: returns the violation lines."""
    out = []
    for folder, rel in files:
        with open(os.path.join(root, rel), encoding='utf-8', errors='replace') as f:
            for lineno, line in enumerate(f, 1):
                m = INCLUDE_RE.match(line)
                if not m:
                    continue
                target = m.group(1)
                included = target + '/' + m.group(2)
                if (folder, included) in EXCEPTIONS:
                    continue
                if target == folder:
                    continue  # "../own/x.h": odd, but not an arrow
                if target not in FLOORS:
                    out.append('%s:%d includes %s, which is not a source folder' % (rel, lineno, target))
                    continue
                mine, theirs = FLOORS[folder], FLOORS[target]
                if theirs < mine:
                    continue
                where = 'above' if theirs > mine else 'beside'
                out.append('%s:%d includes %s, which is %s it (%s is floor %d, %s is floor %d)'
                           % (rel, lineno, included, where, folder, mine, target, theirs))
    return out


def strip_code(text):
    """Drops comments, string and character literals (kept as empty quotes) and preprocessor lines, keeping the
    line structure so positions still map to line numbers."""
    out = []
    i = 0
    n = len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c in ' \t':
            out.append(c)
            i += 1
            continue
        if at_line_start and c == '#':  # a directive, with its backslash continuations
            while i < n and text[i] != '\n':
                if text[i] == '\\' and i + 1 < n and text[i + 1] == '\n':
                    out.append('\n')
                    i += 2
                    continue
                i += 1
            continue
        at_line_start = c == '\n'
        if text.startswith('//', i):
            while i < n and text[i] != '\n':
                i += 1
            continue
        if text.startswith('/*', i):
            end = text.find('*/', i + 2)
            end = n if end < 0 else end + 2
            out.append('\n' * text.count('\n', i, end))
            i = end
            continue
        if c in '"\'':
            j = i + 1
            while j < n and text[j] != c and text[j] != '\n':
                j += 2 if text[j] == '\\' else 1
            out.append(c + c)
            i = j + 1
            continue
        out.append(c)
        i += 1
    return ''.join(out)


def top_level_statements(code):
    """Yields (text, terminator, line) for each statement at brace depth 0: the text since the previous
    depth-0 ';', '{' or '}' up to a ';' (a declaration) or a '{' (a definition's or a type's body); line is
    where the text's first non-blank character sits. `extern "C" {` blocks do not count as depth."""
    code = re.sub(r'extern\s*""\s*\{', lambda m: ' ' * len(m.group(0)), code)
    depth = 0
    start = 0
    for i, c in enumerate(code):
        if c == '{':
            if depth == 0:
                yield code[start:i], '{', line_of(code, start)
            depth += 1
        elif c == '}':
            depth = max(depth - 1, 0)  # max: the '}' closing an extern "C" block
            if depth == 0:
                start = i + 1
        elif c == ';' and depth == 0:
            yield code[start:i], ';', line_of(code, start)
            start = i + 1


def line_of(code, start):
    """The 1-based line of the first non-blank character at or after start."""
    m = re.compile(r'\S').search(code, start)
    return code.count('\n', 0, m.start() if m else start) + 1


def function_name(stmt):
    """The function a declaration or definition statement names, or None."""
    words = stmt.split()
    if not words or words[0] in ('typedef', 'struct', 'union', 'enum', 'return') or '=' in stmt.split('(')[0]:
        return None
    for m in IDENT_CALL_RE.finditer(stmt):
        name = m.group(1)
        if name in NOT_FUNCTIONS:
            continue
        before = stmt[:m.start()]
        if '(' in before:  # e.g. void (*fp)(...): a pointer, not a function
            return None
        return name
    return None


def check_headers(root, files):
    """Rule 2: returns the violation lines."""
    defined = {}  # function name -> set of folders defining it (non-static)
    declared = []  # (header, folder, line, name)
    for folder, rel in files:
        with open(os.path.join(root, rel), encoding='utf-8', errors='replace') as f:
            code = strip_code(f.read())
        is_header = rel.endswith(('.h', '.cuh'))
        for stmt, term, line in top_level_statements(code):
            if is_header and term == ';':
                name = function_name(stmt)
                if name and not re.search(r'\bstatic\b', stmt):
                    declared.append((rel, folder, line, name))
            elif not is_header and term == '{' and stmt.rstrip().endswith(')'):
                name = function_name(stmt)
                if name and not re.search(r'\bstatic\b', stmt):
                    defined.setdefault(name, set()).add(folder)
    out = []
    for rel, folder, line, name in declared:
        where = defined.get(name)
        if not where or folder in where:
            continue
        out.append('%s:%d declares %s, which is defined in %s/, not in %s/'
                   % (rel, line, name, ', '.join(sorted(where)), folder))
    return out


def main(argv):
    root = argv[1] if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = list(source_files(root))
    if not files:
        print('check_floors: no sources under %s' % root, file=sys.stderr)
        return 2
    violations = check_includes(root, files) + check_headers(root, files)
    for v in violations:
        print(v)
    if violations:
        print('check_floors: %d violation(s) in %d files' % (len(violations), len(files)), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
