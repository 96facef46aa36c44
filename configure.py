#!/usr/bin/env python3
"""Probes the machine and writes build.ninja for kvlab (in the manner of ninja's own configure.py).

Sources are globbed when this script runs: after adding or removing a source file, run ./configure.py again.
Editing configure.py itself needs no re-run: ninja regenerates the build file with the same options.

Where the build file goes (paths in it are relative to the repository root; always run ninja from there):
  default builddir 'build'  ->  ./build.ninja           run: ninja [target]
  --builddir DIR            ->  DIR/build.ninja         run: ninja -f DIR/build.ninja [target]
so several configurations (say build/ and build-asan/) can live side by side.

Targets: all (default: the library, the CUDA backend libkvlab_cuda.so when nvcc is found, and every program:
train, infer, serve, bench, tests; with g++, also the CUDA emulator's backend and tests in <builddir>/cuda-emu/),
test (build and run the Criterion tests: <builddir>/tests, and every CUDA op on the emulator,
<builddir>/cuda-emu/tests, which test-cuda-emu runs alone),
bench (build and run the benchmarks), report (build, then reproduce the course report into report/: scripts/report.py),
fuzz (the libFuzzer targets of tests/fuzz/, built with clang into <builddir>-fuzz/ when clang with libFuzzer is
found; run them with scripts/fuzz.sh), plus any output path such as build/train.
"""

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

LIB_DIRS = ['common', 'layers', 'attention', 'kv', 'data', 'checkpoints', 'decode', 'train', 'infer']
SANITIZE = '-fsanitize=address,undefined'
ASAN_OPTIONS = 'detect_leaks=1:abort_on_error=1'
UBSAN_OPTIONS = 'print_stacktrace=1:halt_on_error=1'
LSAN_SUPP = 'tests/lsan.supp'
FUZZ_DIR = 'tests/fuzz'          # one fuzz_<target>.c per input surface (tests/fuzz/fuzz.h)
FUZZ_SHARED = ('fuzz_common.c',)  # helpers of every target, not a target
FUZZ_MAIN = 'main_libfuzzer.c'    # the libFuzzer entry point: fuzz build only, never in build/tests
FUZZ_SANITIZE = '-fsanitize=fuzzer,address,undefined'
CUDA_SO = 'libkvlab_cuda.so'      # the CUDA backend, loaded at run time by common/device.c
CUDA_SO_EXPORTS = 'layers/ops_cuda.map'  # its version script: the entry point and the *_cuda ops
# The CUDA emulator (tests/cuda_emu/, README "Testing the CUDA kernels without a GPU"): every .cu source rewritten by
# cu2cpp.py into C++ for g++, linked with the emulator's runtime into <builddir>/cuda-emu/libkvlab_cuda.so, and the
# CUDA tests built against it into <builddir>/cuda-emu/tests (the loader finds the library next to the program).
EMU_DIR = 'tests/cuda_emu'
EMU_RUNTIME = ('emu_runtime.cpp', 'emu_api.cpp', 'emu_fiber.cpp', 'emu_cublas.cpp', 'emu_host.cpp')
EMU_TEST_CU = 'test_emu.cu'       # the emulator's own tests: deliberately broken kernels, through the same rewrite
# Data-parallel training (train/dist.h): train/dist_mpi.c is compiled with the MPI wrapper's flags into build/train
# only, ahead of the library, whose train/dist_serial.c (the same functions for one process) it then replaces.
MPI_SRC = os.path.join('train', 'dist_mpi.c')
# the tests of the CUDA backend, run on the emulator too: backend_util.c and every test_backend_*.c, test_cuda_*.c
CUDA_TEST_UTIL = 'tests/backend_util.c'
CUDA_TEST_GLOBS = ('tests/test_backend_*.c', 'tests/test_cuda_*.c')


# --- a ninja_syntax-style writer ------------------------------------------------------------------

def escape(text):
    """Escapes a value for a ninja variable or command ($ is ninja's only special character there)."""
    return text.replace('$', '$$')


def escape_path(path):
    return path.replace('$ ', '$$ ').replace(' ', '$ ').replace(':', '$:')


class Writer:
    def __init__(self, out, width=100):
        self.out, self.width = out, width

    def newline(self):
        self.out.write('\n')

    def comment(self, text):
        self.out.write('# ' + text + '\n' if text else '#\n')

    def variable(self, key, value, indent=0):
        if isinstance(value, (list, tuple)):
            value = ' '.join(v for v in value if v)
        self._line('%s = %s' % (key, value), indent)

    def rule(self, name, command, **kwargs):
        self._line('rule ' + name)
        self.variable('command', command, 1)
        for key in ('description', 'depfile', 'deps', 'pool'):
            if kwargs.get(key):
                self.variable(key, kwargs[key], 1)
        if kwargs.get('generator'):
            self.variable('generator', '1', 1)

    def build(self, outputs, rule, inputs=(), implicit=(), order_only=(), variables=None):
        parts = [escape_path(p) for p in outputs]
        parts[-1] += ':'
        parts.append(rule)
        parts += [escape_path(p) for p in inputs]
        if implicit:
            parts += ['|'] + [escape_path(p) for p in implicit]
        if order_only:
            parts += ['||'] + [escape_path(p) for p in order_only]
        self._line('build ' + ' '.join(parts))
        for key, value in (variables or {}).items():
            self.variable(key, value, 1)

    def default(self, targets):
        self._line('default ' + ' '.join(escape_path(t) for t in targets))

    def _line(self, text, indent=0):
        """Writes text, wrapping long lines at spaces with '$' continuations (never inside a '$ ' escape)."""
        leading = '  ' * indent
        while len(leading) + len(text) > self.width:
            space = -1
            for i in range(self.width - len(leading) - 2, 0, -1):
                if text[i] == ' ' and not _escaped(text, i):
                    space = i
                    break
            if space < 0:
                break
            self.out.write(leading + text[:space] + ' $\n')
            text = text[space + 1:]
            leading = '  ' * (indent + 2)
        self.out.write(leading + text + '\n')


def _escaped(text, i):
    dollars = 0
    while i - dollars - 1 >= 0 and text[i - dollars - 1] == '$':
        dollars += 1
    return dollars % 2 == 1


# --- probes ---------------------------------------------------------------------------------------

class Prober:
    """Compiles and links tiny programs with the real compiler; remembers what was missing."""

    def __init__(self, cc, base_flags):
        self.cc, self.base_flags = shlex.split(cc), base_flags
        self.tmp = tempfile.mkdtemp(prefix='kvlab-configure-')
        self.missing = []  # (what, Debian package)

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def build(self, source, flags=(), libs=()):
        """Returns (ok, the compiler's first error line, path of the program)."""
        src, exe = os.path.join(self.tmp, 'probe.c'), os.path.join(self.tmp, 'probe')
        with open(src, 'w') as f:
            f.write(source)
        cmd = self.cc + self.base_flags + list(flags) + [src, '-o', exe] + list(libs)
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True)
        except OSError as e:
            return False, str(e), exe
        lines = [l for l in p.stdout.splitlines() if 'error' in l] or p.stdout.splitlines()
        return p.returncode == 0, (lines[0].strip() if lines else ''), exe

    def check(self, what, package, source, flags=(), libs=()):
        """Returns the probe program's path when it built, else None (and notes the package)."""
        ok, err, exe = self.build(source, flags, libs)
        print('checking for %s... %s' % (what, 'yes' if ok else 'no'))
        if not ok:
            print('  %s' % err)
            print('  -> Debian package: %s' % package)
            self.missing.append((what, package))
        return exe if ok else None


PROBE_MAIN = 'int main(void) { return 0; }\n'

PROBE_OPENMP = r'''#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n == omp_get_max_threads() ? 0 : 1;
}
'''

PROBE_CBLAS = r'''#include <cblas.h>
#include <stdio.h>
int openblas_get_parallel(void);
int main(void) {
    float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {0};
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
    printf("%d\n", openblas_get_parallel());
    return c[3] == 4.0f ? 0 : 1;
}
'''

PROBE_CRITERION = r'''#include <criterion/criterion.h>
Test(probe, probe) { cr_assert(1); }
'''

PROBE_XXHASH = r'''#include <xxhash.h>
int main(void) { return XXH64("kvlab", 5, 0) == 0; }
'''

PROBE_MHD = r'''#include <microhttpd.h>
int main(void) { return MHD_get_version() == 0; }
'''

PROBE_JANSSON = r'''#include <jansson.h>
int main(void) {
    json_t *j = json_pack("{s:i}", "n", 1);
    int ok = json_integer_value(json_object_get(j, "n")) == 1;
    json_decref(j);
    return !ok;
}
'''

PROBE_STB = r'''#define STB_DS_IMPLEMENTATION
#include <stb/stb_ds.h>
int main(void) {
    int *v = NULL;
    arrput(v, 1);
    int ok = arrlen(v) == 1;
    arrfree(v);
    return !ok;
}
'''


PROBE_MPI = r'''#include <mpi.h>
int main(void) {
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    return MPI_Get_library_version(v, &n) != MPI_SUCCESS;
}
'''


def probe_mpi(probe, no_mpi):
    """MPI for build/train: (compile flags, link flags, note), or (None, None, note) without it (build/train then
    runs one process and says so). The flags come from the compiler wrapper (mpicc --showme:compile/link, Open
    MPI; mpicc -compile_info/-link_info, MPICH) or pkg-config ompi-c, and must build a probe with our compiler."""
    if no_mpi:
        return None, None, 'off (--no-mpi): build/train runs one process'
    candidates = []
    mpicc = shutil.which('mpicc')
    if mpicc:
        for compile_arg, link_arg in (('--showme:compile', '--showme:link'), ('-compile_info', '-link_info')):
            try:
                c = subprocess.run([mpicc, compile_arg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   universal_newlines=True, timeout=30)
                l = subprocess.run([mpicc, link_arg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   universal_newlines=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                continue
            if c.returncode == 0 and l.returncode == 0:
                cflags, lflags = shlex.split(c.stdout), shlex.split(l.stdout)
                if compile_arg == '-compile_info':  # MPICH prints the whole command: keep the flags
                    cflags = [f for f in cflags[1:] if f.startswith(('-I', '-D'))]
                    lflags = [f for f in lflags[1:] if f.startswith(('-L', '-l', '-Wl'))]
                candidates.append((cflags, lflags))
                break
    if shutil.which('pkg-config'):
        try:
            c = subprocess.run(['pkg-config', '--cflags', 'ompi-c'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               universal_newlines=True, timeout=30)
            l = subprocess.run(['pkg-config', '--libs', 'ompi-c'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               universal_newlines=True, timeout=30)
            if c.returncode == 0 and l.returncode == 0:
                candidates.append((shlex.split(c.stdout), shlex.split(l.stdout)))
        except (OSError, subprocess.SubprocessError):
            pass
    err = 'no mpicc on PATH and no pkg-config ompi-c'
    for cflags, lflags in candidates:
        ok, err, _ = probe.build(PROBE_MPI, cflags, lflags)
        if ok:
            launcher = 'mpirun' if shutil.which('mpirun') else 'no mpirun on PATH (Debian package: openmpi-bin)'
            return cflags, lflags, 'yes (%s; %s)' % (' '.join(lflags), launcher)
    return None, None, '%s -> build/train runs one process (Debian packages: libopenmpi-dev openmpi-bin)' % err


PROBE_LIBFUZZER = r'''#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return size > 0 && data[0] == 'k'; }
'''


def probe_fuzz(fuzz_cc):
    """Whether fuzz_cc links a libFuzzer target under ASan + UBSan (the fuzz build); (ok, note)."""
    cc0 = shlex.split(fuzz_cc)[0] if shlex.split(fuzz_cc) else ''
    if not shutil.which(cc0):
        return False, '%s not found (Debian package: clang)' % fuzz_cc
    probe = Prober(fuzz_cc, ['-std=c11', '-D_GNU_SOURCE'])
    try:
        ok, err, _ = probe.build(PROBE_LIBFUZZER, [FUZZ_SANITIZE], [FUZZ_SANITIZE])
        if ok:
            ok, err, _ = probe.build(PROBE_OPENMP, ['-fopenmp'], ['-fopenmp'])
            if not ok:
                return False, '%s has no OpenMP (Debian package: libomp-dev): %s' % (fuzz_cc, err)
    finally:
        probe.close()
    return ok, ('' if ok else '%s cannot link %s: %s' % (fuzz_cc, FUZZ_SANITIZE, err))


EMU_VAR_INIT = '-ftrivial-auto-var-init=pattern'  # uninitialised locals ("registers") read as a junk pattern


def probe_cxx(cxx):
    """Whether cxx compiles and links C++17 (the CUDA emulator's compiler); (ok, note, extra flags it takes)."""
    argv = shlex.split(cxx)
    if not argv or not shutil.which(argv[0]):
        return False, '%s not found (Debian package: g++)' % cxx, []
    tmp = tempfile.mkdtemp(prefix='kvlab-configure-')

    def build(flags):
        src = os.path.join(tmp, 'probe.cpp')
        with open(src, 'w') as f:
            f.write('#include <tuple>\n'
                    'int main() { return std::apply([](int a) { return a; }, std::tuple<int>(0)); }\n')
        return subprocess.run(argv + ['-std=c++17'] + flags + [src, '-o', os.path.join(tmp, 'probe')],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    try:
        p = build([])
        extra = [EMU_VAR_INIT] if p.returncode == 0 and build([EMU_VAR_INIT]).returncode == 0 else []
    except OSError as e:
        return False, '%s: %s' % (cxx, e), []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if p.returncode != 0:
        lines = p.stdout.strip().splitlines()
        return False, '%s cannot build C++17: %s (Debian package: g++)' % (cxx, lines[0] if lines else ''), []
    return True, '', extra


def find_nvcc():
    nvcc = shutil.which('nvcc')
    if not nvcc and os.access('/usr/local/cuda/bin/nvcc', os.X_OK):
        nvcc = '/usr/local/cuda/bin/nvcc'
    return nvcc


def sources(folder, ext):
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.endswith(ext) and os.path.isfile(os.path.join(folder, f)))


# --- main -----------------------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], epilog='\n'.join(__doc__.split('\n')[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--debug', action='store_true', help='-O0 -g instead of -O3')
    p.add_argument('--sanitize', action='store_true',
                   help='AddressSanitizer + UndefinedBehaviorSanitizer (compile and link); '
                        '`ninja test` then runs with leak detection and halts on the first error')
    p.add_argument('--cuda-arch', default='sm_90', metavar='ARCH',
                   help='nvcc -arch for .cu sources (default: %(default)s)')
    p.add_argument('--no-cuda', action='store_true',
                   help='ignore nvcc even when it is installed (the CUDA emulator stays on: see --no-cuda-emu)')
    p.add_argument('--cxx', default=os.environ.get('CXX') or 'g++', metavar='CXX',
                   help='C++ compiler for the CUDA emulator (default: $CXX, else g++; currently %(default)s)')
    p.add_argument('--no-cuda-emu', action='store_true',
                   help='do not build the CUDA emulator\'s backend and tests (<builddir>/cuda-emu/), even with g++')
    p.add_argument('--builddir', default='build', metavar='DIR',
                   help='where objects and programs go (default: %(default)s)')
    p.add_argument('--cc', default=os.environ.get('CC') or 'cc', metavar='CC',
                   help='C compiler (default: $CC, else cc; currently %(default)s)')
    p.add_argument('--fuzz-cc', default='clang', metavar='CC',
                   help='clang for `ninja fuzz` (libFuzzer targets in <builddir>-fuzz/; default: %(default)s); '
                        'without one the rest of the build is unchanged and `ninja fuzz` says why')
    p.add_argument('--no-mpi', action='store_true',
                   help='build build/train without MPI even when mpicc is found (one process only)')
    p.add_argument('--no-fuzz', action='store_true', help='write no libFuzzer edges even when clang has libFuzzer')
    args = p.parse_args()
    args.builddir = os.path.normpath(args.builddir)
    if not re.fullmatch(r'[A-Za-z0-9._/+-]+', args.builddir) or args.builddir == '.':
        p.error('--builddir must be a plain path (letters, digits, . _ / + -), not %r' % args.builddir)
    return args


def main():
    args = parse_args()
    root = os.path.dirname(os.path.abspath(__file__))
    os.chdir(root)
    builddir = args.builddir
    ninja_file = 'build.ninja' if builddir == 'build' else os.path.join(builddir, 'build.ninja')
    configure_args = ['--cc', args.cc, '--builddir', builddir, '--cuda-arch', args.cuda_arch,
                      '--fuzz-cc', args.fuzz_cc, '--cxx', args.cxx]
    configure_args += [f for f, on in (('--debug', args.debug), ('--sanitize', args.sanitize),
                                       ('--no-cuda', args.no_cuda), ('--no-fuzz', args.no_fuzz), ('--no-mpi', args.no_mpi),
                                       ('--no-cuda-emu', args.no_cuda_emu)) if on]

    # Flags.
    opt = ['-O0', '-g'] if args.debug else ['-O3']
    # -ffp-contract=off: no fused multiply-adds the source does not write. gcc's -std=c11 implies it, clang's
    # does not; the bit-exact CPU-vs-CUDA tests rely on it (and the emulated .cu sources get it too).
    cflags = opt + ['-march=native', '-std=c11', '-D_GNU_SOURCE', '-I.', '-ffp-contract=off',
                    '-Wall', '-Wextra', '-Wno-unused-parameter', '-fopenmp']
    ldflags = ['-fopenmp']
    san = []
    if args.sanitize:
        san = [SANITIZE, '-fno-sanitize-recover=all', '-fno-omit-frame-pointer']
        cflags += san + ([] if args.debug else ['-g'])
        ldflags += san
    # the emulated CUDA sources (C++17 through tests/cuda_emu/cu2cpp.py): position-independent, into a .so.
    # Unknown pragmas are nvcc's #pragma unroll; sign-compare is host-compiler-only (nvcc never warns on device code).
    # Where the compiler has it, EMU_VAR_INIT fills uninitialised locals with a pattern, as a GPU's registers hold junk.
    emu_cxxflags = opt + ['-march=native', '-std=c++17', '-ffp-contract=off', '-fPIC', '-I.', '-I' + EMU_DIR,
                          '-I' + EMU_DIR + '/include', '-DKVLAB_CUDA=1', '-Wall', '-Wextra', '-Wno-unused-parameter',
                          '-Wno-unknown-pragmas', '-Wno-sign-compare']
    emu_cxxflags += san + (['-g'] if args.sanitize and not args.debug else [])
    libs = ['-lxxhash', '-lopenblas', '-lm', '-ldl']
    test_libs = ['-lcriterion']
    serve_libs = ['-lmicrohttpd', '-ljansson']  # linked into build/serve only

    # Probes.
    cc0 = shlex.split(args.cc)[0] if shlex.split(args.cc) else ''
    if not shutil.which(cc0):
        print('error: C compiler %r not found -> Debian package: gcc' % args.cc)
        print('  apt-get install gcc   (or: bash scripts/install-deps.sh)')
        return 1
    probe = Prober(args.cc, ['-march=native', '-std=c11', '-D_GNU_SOURCE'])
    try:
        ok, err, _ = probe.build(PROBE_MAIN)
        print('checking whether %s compiles C11 with -march=native... %s' % (args.cc, 'yes' if ok else 'no'))
        if not ok:
            print('  %s\n  -> Debian package: libc6-dev (C library headers), or a working gcc' % err)
            print('  apt-get install gcc libc6-dev   (or: bash scripts/install-deps.sh)')
            return 1
        clang = 'clang' in os.path.basename(cc0)
        probe.check('OpenMP', 'libomp-dev' if clang else 'gcc', PROBE_OPENMP, ['-fopenmp'], ['-fopenmp'])
        blas_note = ''
        exe = probe.check('CBLAS (OpenBLAS)', 'libopenblas-openmp-dev (any libopenblas-dev works; '
                          'the OpenMP build is recommended)',
                          PROBE_CBLAS, libs=['-lopenblas', '-lm'])
        if exe:
            try:
                par = subprocess.run([exe], stdout=subprocess.PIPE, universal_newlines=True,
                                     timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                par = ''
            blas_note = {'0': 'sequential', '1': 'pthreads', '2': 'openmp'}.get(par, 'unknown threading')
            if par in ('0', '1'):
                print('  note: this OpenBLAS is the %s build; kvlab uses OpenMP, so prefer '
                      'libopenblas-openmp-dev' % blas_note)
        probe.check('Criterion', 'libcriterion-dev', PROBE_CRITERION, libs=['-lcriterion'])
        probe.check('xxHash', 'libxxhash-dev', PROBE_XXHASH, libs=['-lxxhash'])
        probe.check('stb (stb/stb_ds.h)', 'libstb-dev', PROBE_STB)
        probe.check('libmicrohttpd', 'libmicrohttpd-dev', PROBE_MHD, libs=['-lmicrohttpd'])
        probe.check('jansson', 'libjansson-dev', PROBE_JANSSON, libs=['-ljansson'])
        mpi_cflags, mpi_libs, mpi_note = probe_mpi(probe, args.no_mpi)
        print('checking for MPI (build/train across processes)... %s' % mpi_note)
        if args.sanitize:
            probe.check(SANITIZE, 'gcc (libasan, libubsan)', PROBE_MAIN, [SANITIZE], [SANITIZE])
        missing = probe.missing
    finally:
        probe.close()
    if missing:
        packages = []
        for _, pkg in missing:
            if pkg.split()[0] not in packages:
                packages.append(pkg.split()[0])
        print('\nerror: missing %s' % ', '.join(w for w, _ in missing))
        print('install them with:\n  apt-get install %s' % ' '.join(packages))
        print('or everything kvlab needs:\n  bash scripts/install-deps.sh')
        return 1

    # Sources.
    lib_c = [s for d in LIB_DIRS for s in sources(d, '.c') if os.path.basename(s) != 'main.c' and s != MPI_SRC]
    lib_cu = [s for d in LIB_DIRS for s in sources(d, '.cu')]
    programs = {}  # name -> sources besides the library
    for name in ('train', 'infer'):
        if os.path.isfile(os.path.join(name, 'main.c')):
            programs[name] = [os.path.join(name, 'main.c')]
    if 'train' in programs and mpi_cflags is not None and os.path.isfile(MPI_SRC):
        programs['train'].append(MPI_SRC)
    if sources('serve', '.c'):
        programs['serve'] = sources('serve', '.c')
    if sources('bench', '.c'):
        programs['bench'] = sources('bench', '.c')
    if sources('tests', '.c'):
        programs['tests'] = sources('tests', '.c')
    # Fuzz targets: the tests binary replays their corpora (tests/test_fuzz_replay.c) through the same
    # fuzz_<target> functions; the http target includes serve/http.c, so it links serve's other objects.
    fuzz_c = [s for s in sources(FUZZ_DIR, '.c') if os.path.basename(s) != FUZZ_MAIN]
    fuzz_targets = [os.path.basename(s)[:-2] for s in fuzz_c if os.path.basename(s) not in FUZZ_SHARED]
    fuzz_serve = [s for s in sources('serve', '.c') if os.path.basename(s) not in ('main.c', 'http.c')]
    if 'tests' in programs and fuzz_c:
        programs['tests'] = programs['tests'] + fuzz_c
    if args.no_fuzz:
        fuzz_ok, fuzz_note = False, 'off (--no-fuzz)'
    else:
        fuzz_ok, fuzz_note = probe_fuzz(args.fuzz_cc)
        if fuzz_ok:
            fuzz_note = '%s, %d targets (%s) in %s-fuzz/' % (args.fuzz_cc, len(fuzz_targets),
                                                            ' '.join(fuzz_targets), builddir)
    print('checking for libFuzzer (%s %s)... %s' % (args.fuzz_cc, FUZZ_SANITIZE,
                                                   'skipped' if args.no_fuzz else 'yes' if fuzz_ok else 'no'))
    if not fuzz_ok and not args.no_fuzz:
        print('  %s\n  -> `ninja fuzz` will say so; everything else builds as usual' % fuzz_note)

    # CUDA: every .cu source goes into one shared object, $builddir/libkvlab_cuda.so, with the C helpers its
    # kernels call (PIC copies from the folders that hold .cu sources, and common/). The programs never link the
    # CUDA libraries: common/device.c loads the .so with dlopen when a run asks for --device cuda, so a CPU run
    # starts in milliseconds and a few MiB (issue 13). Only the tests binary links the .so, to call the *_cuda
    # ops directly (compiled with KVLAB_CUDA=1).
    cu_dirs = {'common'} | {s.split(os.sep)[0] for s in lib_cu}
    pic_c = [s for s in lib_c if s.split(os.sep)[0] in cu_dirs and s != os.path.join('common', 'device.c')]
    nvcc = None if args.no_cuda else find_nvcc()
    cuda = None
    if args.no_cuda:
        cuda_note = 'off (--no-cuda)'
    elif not nvcc:
        cuda_note = 'nvcc not found (CPU only; --device cuda says so)'
    elif not lib_cu:
        cuda_note = 'found at %s (no .cu sources yet)' % nvcc
    else:
        cuda_root = os.path.dirname(os.path.dirname(nvcc))
        cuda_lib = os.path.join(cuda_root, 'lib64')
        cuda_libs = ['-L' + cuda_lib, '-Wl,-rpath,' + cuda_lib] if os.path.isdir(cuda_lib) else []
        cuda_libs += ['-lcudart', '-lcublas', '-lcublasLt', '-lcurand', '-lstdc++']
        cuda = dict(libs=cuda_libs, so='$builddir/' + CUDA_SO)
        cuda_note = ('found at %s, %d .cu sources (-arch=%s), built as %s/%s, loaded by --device cuda'
                     % (nvcc, len(lib_cu), args.cuda_arch, builddir, CUDA_SO))
    # The CUDA emulator: independent of nvcc (CI may have none), on whenever g++ builds C++17.
    emu = None
    if args.no_cuda_emu:
        emu_note = 'off (--no-cuda-emu)'
    elif not lib_cu:
        emu_note = 'no .cu sources'
    else:
        emu_ok, emu_note, emu_extra = probe_cxx(args.cxx)
        emu_cxxflags += emu_extra
        print('checking for the CUDA emulator\'s C++17 compiler (%s)... %s' % (args.cxx, 'yes' if emu_ok else 'no'))
        if emu_ok:
            emu = dict(tests=[CUDA_TEST_UTIL] + sorted(f for g in CUDA_TEST_GLOBS for f in glob.glob(g)),
                       test_cu=[s for s in [os.path.join(EMU_DIR, EMU_TEST_CU)] if os.path.isfile(s)])
            emu_note = ('%s: %d .cu sources emulated into %s/cuda-emu/%s, tests in %s/cuda-emu/tests'
                        % (args.cxx, len(lib_cu), builddir, CUDA_SO, builddir))
        else:
            print('  %s\n  -> without the emulator the CUDA ops are tested only on a GPU' % emu_note)
    stale_so = os.path.join(builddir, CUDA_SO)
    if not cuda and os.path.exists(stale_so):  # from an earlier configuration with CUDA: programs would load it
        os.remove(stale_so)

    # Criterion runs two test processes at once on two cores: OpenMP threads that spin while idle would
    # starve each other (measured: a 0.25 s suite took 17 s), so idle threads sleep during tests.
    run_env = ['KVLAB_BUILD=' + shlex.quote(os.path.join(root, builddir)), 'OMP_WAIT_POLICY=passive']
    if args.sanitize:
        run_env += ['ASAN_OPTIONS=' + ASAN_OPTIONS, 'UBSAN_OPTIONS=' + UBSAN_OPTIONS]
        if os.path.isfile(LSAN_SUPP):
            run_env.append('LSAN_OPTIONS=suppressions=' + shlex.quote(os.path.join(root, LSAN_SUPP)))

    # Write.
    if os.path.dirname(ninja_file):
        os.makedirs(os.path.dirname(ninja_file), exist_ok=True)
    tmp_file = ninja_file + '.tmp'
    with open(tmp_file, 'w') as f:
        write_ninja(Writer(f), dict(
            args=args, root=root, builddir=builddir, ninja_file=ninja_file, configure_args=configure_args,
            cflags=cflags, ldflags=ldflags, libs=libs, mpi_cflags=mpi_cflags or [], mpi_libs=mpi_libs or [],
            mpi_note=mpi_note, test_libs=test_libs, serve_libs=serve_libs, run_env=run_env,
            blas_note=blas_note, cuda_note=cuda_note, nvcc=nvcc, cuda=cuda, lib_c=lib_c, lib_cu=lib_cu,
            pic_c=pic_c, emu=emu, emu_note=emu_note, emu_cxxflags=emu_cxxflags,
            programs=programs, fuzz_ok=fuzz_ok, fuzz_note=fuzz_note, fuzz_c=fuzz_c, fuzz_targets=fuzz_targets,
            fuzz_serve=fuzz_serve))
    os.replace(tmp_file, ninja_file)

    # Summary.
    print('\ncompiler: %s' % args.cc)
    print('cflags:   %s' % ' '.join(cflags))
    print('ldflags:  %s %s' % (' '.join(ldflags), ' '.join(libs)))
    print('features: OpenMP, CBLAS (OpenBLAS, %s), Criterion, xxHash, stb, libmicrohttpd, jansson%s'
          % (blas_note, ', ASan+UBSan' if args.sanitize else ''))
    print('cuda:     %s' % cuda_note)
    print('cuda-emu: %s' % emu_note)
    print('fuzz:     %s' % fuzz_note)
    print('mpi:      %s' % mpi_note)
    print('sources:  %d library (.c), %d library (.cu); programs: %s'
          % (len(lib_c), len(lib_cu), ', '.join(sorted(programs)) or 'none yet'))
    print('wrote %s (builddir %s)' % (ninja_file, builddir))
    ninja = 'ninja' if ninja_file == 'build.ninja' else 'ninja -f ' + ninja_file
    print('now run: %s        (tests: %s test)' % (ninja, ninja))
    if not shutil.which('ninja'):
        print('hint: ninja is not on PATH -> Debian package: ninja-build')
    return 0


def write_ninja(n, v):
    args, builddir = v['args'], v['builddir']
    n.comment('kvlab build file, written by configure.py: do not edit. Sources are globbed by configure.py,')
    n.comment('so re-run ./configure.py after adding or removing source files (edits to configure.py')
    n.comment('re-run it automatically, with the options below).')
    n.comment('')
    n.comment('configured with: ./configure.py %s' % ' '.join(shlex.quote(a) for a in v['configure_args']))
    n.comment('  debug: %s  sanitize: %s  cuda-arch: %s' % ('yes' if args.debug else 'no',
              'yes' if args.sanitize else 'no', args.cuda_arch))
    n.comment('  cuda: %s' % v['cuda_note'])
    n.comment('  cuda-emu: %s' % v['emu_note'])
    n.comment('  openblas: %s' % v['blas_note'])
    n.comment('  mpi: %s' % v['mpi_note'])
    n.comment('run ninja from %s%s' % (v['root'], '' if v['ninja_file'] == 'build.ninja'
                                       else ' as: ninja -f ' + v['ninja_file']))
    n.newline()
    n.variable('ninja_required_version', '1.5')
    n.variable('builddir', builddir)
    n.variable('root', escape(shlex.quote(v['root'])))
    n.variable('python', escape(shlex.quote(sys.executable or 'python3')))
    n.variable('configure_args', escape(' '.join(shlex.quote(a) for a in v['configure_args'])))
    n.variable('debug', '1' if args.debug else '0')
    n.variable('sanitize', '1' if args.sanitize else '0')
    n.variable('cuda_arch', args.cuda_arch)
    n.variable('cc', escape(args.cc))
    n.variable('cflags', escape(' '.join(v['cflags'])))
    n.variable('ldflags', escape(' '.join(v['ldflags'])))
    n.variable('libs', escape(' '.join(v['libs'])))
    n.variable('test_libs', escape(' '.join(v['test_libs'])))
    n.variable('serve_libs', escape(' '.join(v['serve_libs'])))
    n.variable('mpi_cflags', escape(' '.join(v['mpi_cflags'])))
    n.variable('mpi_libs', escape(' '.join(v['mpi_libs'])))
    n.variable('run_env', escape(' '.join(v['run_env'])))
    cuda = v['cuda']
    if cuda:
        n.variable('nvcc', escape(v['nvcc']))
        n.variable('cuda_flags', '-g -G -O0' if args.debug else '-O3')
        n.variable('cuda_libs', escape(' '.join(cuda['libs'])))
    emu = v['emu']
    if emu:
        n.variable('cxx', escape(args.cxx))
        n.variable('emu_cxxflags', escape(' '.join(v['emu_cxxflags'])))
    n.newline()

    n.rule('cc', '$cc -MMD -MF $out.d $cflags -c $in -o $out',
           description='CC $out', depfile='$out.d', deps='gcc')
    if cuda:
        # warnings are errors, ours and the host compiler's, so a CUDA build break never lands unnoticed;
        # position-independent: the objects go into libkvlab_cuda.so
        n.rule('cuda', '$nvcc -arch=$cuda_arch $cuda_flags -std=c++17 -Werror all-warnings '
               '-Xcompiler=-Wall,-Wextra,-Werror,-fPIC -I. -DKVLAB_CUDA=1 -MD -MF $out.d -c $in -o $out',
               description='NVCC $out', depfile='$out.d', deps='gcc')
        # no undefined symbol left for the program to supply; the library's references bind inside it
        # (-Bsymbolic) and it exports only what the version script names
        n.rule('solink', '$cc -shared -o $out $in $ldflags -Wl,-soname,%s -Wl,--no-undefined -Wl,-Bsymbolic '
               '-Wl,--version-script,%s -Wl,--as-needed $cuda_libs $libs' % (CUDA_SO, CUDA_SO_EXPORTS),
               description='LINK $out')
    if emu:
        n.rule('cu2cpp', '$python %s/cu2cpp.py $in $out' % EMU_DIR, description='CU2CPP $out')
        # $srcdir: the .cu source's folder, where its #include "..." lines are relative to
        n.rule('emu_cxx', '$cxx -MMD -MF $out.d $emu_cxxflags -iquote $srcdir -c $in -o $out',
               description='CXX $out', depfile='$out.d', deps='gcc')
        n.rule('emu_solink', '$cxx -shared -o $out $in $ldflags -Wl,-soname,%s -Wl,--no-undefined -Wl,-Bsymbolic '
               '-Wl,--version-script,%s $libs' % (CUDA_SO, CUDA_SO_EXPORTS), description='LINK $out')
        n.rule('emu_link', '$cxx $ldflags -o $out $in $libs', description='LINK $out')
    n.rule('ar', 'rm -f $out && ar crs $out $in', description='AR $out')
    n.rule('link', '$cc $ldflags -o $out $in $libs', description='LINK $out')
    n.rule('run', 'cd $root && env $run_env $in $args', description='RUN $in', pool='console')
    n.rule('report', 'cd $root && $python scripts/report.py --bin $builddir', description='REPORT (scripts/report.py --quick)',
           pool='console')
    n.rule('configure', '$python configure.py $configure_args', description='CONFIGURE',
           generator=True, pool='console')
    n.newline()

    def obj(src):
        folder, name = os.path.split(src)
        # rmsnorm.c and rmsnorm.cu live side by side: keep their objects apart.
        return '$builddir/obj/%s/%s' % (folder, name[:-2] + '.o' if name.endswith('.c') else name + '.o')

    lib = '$builddir/libkvlab.a'
    lib_objs = []
    for src in v['lib_c']:
        n.build([obj(src)], 'cc', [src])
        lib_objs.append(obj(src))
    n.newline()
    if lib_objs:
        n.build([lib], 'ar', lib_objs)
        n.newline()

    outputs = [lib] if lib_objs else []
    if cuda or emu:
        n.comment('PIC copies of the C helpers the .cu sources call, for the CUDA backend (real and emulated).')
        pic_objs = []
        for src in v['pic_c']:
            pic = obj(src).replace('$builddir/obj/', '$builddir/obj-pic/', 1)
            n.build([pic], 'cc', [src], variables={'cflags': '$cflags -fPIC'})
            pic_objs.append(pic)
        n.build(['$builddir/libkvlab_pic.a'], 'ar', pic_objs)
        n.newline()
    so = []  # the CUDA backend: every program depends on it, so `ninja build/infer` never pairs a stale one
    if cuda:
        n.comment('The CUDA backend, loaded by --device cuda (common/device.c): the .cu objects and the PIC copies')
        n.comment('of the C helpers they call (only the archive members they need are linked).')
        cu_objs = []
        for src in v['lib_cu']:
            n.build([obj(src)], 'cuda', [src])
            cu_objs.append(obj(src))
        n.build([cuda['so']], 'solink', cu_objs + ['$builddir/libkvlab_pic.a'], implicit=[CUDA_SO_EXPORTS])
        so = [cuda['so']]
        outputs += so
        n.newline()

    for name, srcs in sorted(v['programs'].items()):
        # the tests call the *_cuda ops directly (tests/backend_util.h): KVLAB_CUDA=1 and the .so linked
        cuda_tests = name == 'tests' and cuda
        for src in srcs:
            flags = '$cflags -DKVLAB_CUDA=1' if cuda_tests else '$cflags $mpi_cflags' if src == MPI_SRC else None
            n.build([obj(src)], 'cc', [src], variables={'cflags': flags} if flags else None)
        out = '$builddir/' + name
        extra = {'tests': '$test_libs', 'serve': '$serve_libs'}.get(name)
        if MPI_SRC in srcs:  # its objects come before the library, so its dist_* replace dist_serial.c's
            extra = '$mpi_libs'
        link_objs = [obj(s) for s in srcs]
        if name == 'tests' and v['fuzz_c']:  # the http fuzz target includes serve/http.c: serve's other parts
            for src in v['fuzz_serve']:
                if 'serve' not in v['programs'] or src not in v['programs']['serve']:
                    n.build([obj(src)], 'cc', [src])
                link_objs.append(obj(src))
            extra = '$test_libs $serve_libs'
        if cuda_tests:
            extra = "%s -Wl,-rpath,'$$ORIGIN'" % extra
        n.build([out], 'link', link_objs + ([lib] if lib_objs else []) + (so if cuda_tests else []),
                implicit=[] if cuda_tests else so, variables={'libs': extra + ' $libs'} if extra else None)
        outputs.append(out)
        n.newline()

    emu_tests = write_emu(n, v, obj, lib if lib_objs else None) if emu else None
    if emu_tests:
        outputs += emu_tests

    n.comment('ninja test / ninja bench: build, then run from the repository root (always re-run).')
    progs = ['$builddir/' + p for p in ('train', 'infer', 'serve', 'bench') if p in v['programs']]  # tests run them
    if 'tests' in v['programs']:
        # and the emulated CUDA backend, which the mpi suite's CUDA case loads into build/train
        emu_so = emu_tests[:1] if emu_tests else []
        n.build(['$builddir/.run/test'], 'run', ['$builddir/tests'], implicit=progs + emu_so,
                variables={'args': '--jobs 2'})
        runs = ['$builddir/.run/test']
        if emu_tests:  # the console pool runs one suite at a time; `ninja test-cuda-emu` runs this one alone
            n.build(['$builddir/.run/test-cuda-emu'], 'run', [emu_tests[-1]], variables={'args': '--jobs 2'})
            n.build(['test-cuda-emu'], 'phony', ['$builddir/.run/test-cuda-emu'])
            runs.append('$builddir/.run/test-cuda-emu')
        n.build(['test'], 'phony', runs)
    if 'bench' in v['programs']:
        n.build(['$builddir/.run/bench'], 'run', ['$builddir/bench'])
        n.build(['bench'], 'phony', ['$builddir/.run/bench'])
        n.comment('ninja report: train, evaluate and write report/REPORT.md (resumes; see scripts/report.py).')
        n.build(['$builddir/.run/report'], 'report', [], implicit=['$builddir/' + p for p in ('train', 'infer', 'bench', 'serve')])
        n.build(['report'], 'phony', ['$builddir/.run/report'])
    n.newline()
    write_fuzz(n, v, obj)

    n.build([v['ninja_file']], 'configure', implicit=['configure.py'])
    n.build(['all'], 'phony', outputs)
    n.default(['all'])


def write_emu(n, v, obj, lib):
    """The CUDA emulator (tests/cuda_emu/): every .cu source through cu2cpp.py and g++ into
    $builddir/cuda-emu/libkvlab_cuda.so (the same entry point and exports as the real backend), and the CUDA tests
    plus the emulator's own (EMU_TEST_CU) into $builddir/cuda-emu/tests, which loads that library (it sits next to
    the program, where common/device.c looks). Returns [the library, the tests program]."""
    emu = v['emu']
    d = '$builddir/cuda-emu'
    n.comment('The CUDA emulator: the .cu sources as C++ (%s/cu2cpp.py), fibers for CUDA threads, cuBLAS on '
              'OpenBLAS.' % EMU_DIR)
    cu2cpp = os.path.join(EMU_DIR, 'cu2cpp.py')

    def emulated(src):  # .cu -> generated .cpp -> object
        gen = '%s/gen/%s.cpp' % (d, src)
        o = '%s/obj/%s.o' % (d, src)
        n.build([gen], 'cu2cpp', [src], implicit=[cu2cpp])
        n.build([o], 'emu_cxx', [gen], variables={'srcdir': os.path.dirname(src) or '.'})
        return o

    cu_objs = [emulated(src) for src in v['lib_cu']]
    rt_objs = []
    for name in EMU_RUNTIME:
        src = os.path.join(EMU_DIR, name)
        o = '%s/obj/%s.o' % (d, src)
        n.build([o], 'emu_cxx', [src], variables={'srcdir': EMU_DIR})
        rt_objs.append(o)
    n.build([d + '/libcuemu.a'], 'ar', rt_objs)
    so = d + '/' + CUDA_SO
    n.build([so], 'emu_solink', cu_objs + [d + '/libcuemu.a', '$builddir/libkvlab_pic.a'],
            implicit=[CUDA_SO_EXPORTS])
    test_objs = []
    for src in emu['tests']:  # the CUDA tests, compiled as in a build with nvcc
        o = '%s/obj/%s.o' % (d, src[:-2])
        n.build([o], 'cc', [src], variables={'cflags': '$cflags -DKVLAB_CUDA=1'})
        test_objs.append(o)
    test_objs += [emulated(src) for src in emu['test_cu']]
    prog = d + '/tests'
    n.build([prog], 'emu_link', test_objs + [d + '/libcuemu.a'] + ([lib] if lib else []) + [so],
            variables={'libs': "-lcriterion -Wl,-rpath,'$$ORIGIN' $libs"})
    n.newline()
    return [so, prog]


def write_fuzz(n, v, obj):
    """`ninja fuzz`: every tests/fuzz target as a libFuzzer program in <builddir>-fuzz/ (clang, ASan + UBSan,
    CPU only), or, without clang's libFuzzer, a `fuzz` target that says why and fails."""
    args = v['args']
    fuzzdir = v['builddir'] + '-fuzz'
    n.comment('ninja fuzz: the libFuzzer targets of %s (run them: scripts/fuzz.sh TARGET SECONDS).' % FUZZ_DIR)
    if not v['fuzz_ok']:
        n.rule('fuzz_missing', 'echo %s; false' % shlex.quote('ninja fuzz: ' + v['fuzz_note']),
               description='FUZZ (unavailable)', pool='console')
        n.build(['fuzz'], 'fuzz_missing')
        n.newline()
        return
    fuzz_cflags = ['-O1', '-g', '-fno-omit-frame-pointer', '-std=c11', '-D_GNU_SOURCE', '-I.', '-Wall', '-Wextra',
                   '-Wno-unused-parameter', '-fopenmp', '-fsanitize=fuzzer-no-link,address,undefined',
                   '-fno-sanitize-recover=all']
    n.variable('fuzzdir', fuzzdir)
    n.variable('fuzz_cc', escape(args.fuzz_cc))
    n.variable('fuzz_cflags', escape(' '.join(fuzz_cflags)))
    n.variable('fuzz_ldflags', escape('-fopenmp ' + FUZZ_SANITIZE))
    n.variable('fuzz_libs', '$serve_libs -lxxhash -lopenblas -lm -ldl')
    n.rule('fuzz_cc', '$fuzz_cc -MMD -MF $out.d $fuzz_cflags $defines -c $in -o $out',
           description='FUZZ-CC $out', depfile='$out.d', deps='gcc')
    n.rule('fuzz_link', '$fuzz_cc $fuzz_ldflags -o $out $in $fuzz_libs', description='FUZZ-LINK $out')

    def fobj(src):
        return obj(src).replace('$builddir/', '$fuzzdir/', 1)

    lib_objs = []
    for src in v['lib_c']:
        n.build([fobj(src)], 'fuzz_cc', [src])
        lib_objs.append(fobj(src))
    n.build(['$fuzzdir/libkvlab.a'], 'ar', lib_objs)
    shared = []
    for src in v['fuzz_serve'] + v['fuzz_c']:
        n.build([fobj(src)], 'fuzz_cc', [src])
        shared.append(fobj(src))
    main_src = os.path.join(FUZZ_DIR, FUZZ_MAIN)
    outs = []
    for t in v['fuzz_targets']:
        main_obj = '$fuzzdir/obj/%s/main_%s.o' % (FUZZ_DIR, t)
        n.build([main_obj], 'fuzz_cc', [main_src], variables={'defines': '-DFUZZ_TARGET=fuzz_' + t})
        out = '$fuzzdir/fuzz_' + t
        n.build([out], 'fuzz_link', [main_obj] + shared + ['$fuzzdir/libkvlab.a'])
        outs.append(out)
    n.build(['fuzz'], 'phony', outs)
    n.newline()


if __name__ == '__main__':
    sys.exit(main())
