#!/usr/bin/env python3
"""Serving throughput and latency of build/serve for one KV row format and several client counts: starts the
server on a free port, runs scripts/serve-load.py at each client count, stops the server, and prints one JSON
line per point (serve-load's summary plus "kv_format" and "server_kv_bytes_per_token" from /v1/cache/stats when
it reports it). Used by the report (scripts/report.py, tier 3).

  python3 scripts/serve_bench.py --ckpt FILE [--bin build] [--kv-format fp32] [--clients 1,8]
                                 [--requests 4] [--max-tokens 64] [--threads 1]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()))
    ap.add_argument('--ckpt', required=True, help='the checkpoint or GGUF model build/serve serves')
    ap.add_argument('--bin', default='build', help='build directory holding serve [build]')
    ap.add_argument('--kv-format', default='fp32', help='the pool\'s row format (build/serve --kv-format) [fp32]')
    ap.add_argument('--clients', default='1,8', help='comma-separated client counts, one load run each [1,8]')
    ap.add_argument('--requests', type=int, default=4, help='streamed requests per client [4]')
    ap.add_argument('--max-tokens', type=int, default=64, help='tokens generated per request [64]')
    ap.add_argument('--threads', type=int, default=1, help='the engine\'s OpenMP threads [1]')
    a = ap.parse_args()
    try:
        clients = [int(c) for c in a.clients.split(',')]
        if not clients or min(clients) < 1:
            raise ValueError
    except ValueError:
        sys.exit('serve_bench: bad --clients %r: a comma-separated list of positive counts' % a.clients)
    serve = os.path.join(a.bin, 'serve')
    if not os.access(serve, os.X_OK):
        sys.exit('serve_bench: %s is missing: build first' % serve)
    # every client is on 127.0.0.1: the per-address connection limit (32 by default) would refuse the load itself
    proc = subprocess.Popen([serve, '--ckpt', a.ckpt, '--port', '0', '--kv-format', a.kv_format, '--threads', str(a.threads),
                             '--max-conns-per-ip', '256'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port, said, t0 = None, [], time.time()
        while port is None:
            line = proc.stderr.readline()
            if not line:
                sys.exit('serve_bench: the server stopped: %s' % ''.join(said)[-500:])
            said.append(line)
            m = re.search(r'listening on http://[^ ]*:(\d+) ', line)
            if m:
                port = int(m.group(1))
            if time.time() - t0 > 60:
                sys.exit('serve_bench: no listening line within 60 s')
        for c in clients:
            p = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'serve-load.py'), '--url', 'http://127.0.0.1:%d' % port,
                                '--clients', str(c), '--requests', str(a.requests), '--max-tokens', str(a.max_tokens), '--json'],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            if p.returncode != 0:
                sys.exit('serve_bench: serve-load failed at %d clients: %s' % (c, p.stderr.strip()[-500:]))
            out = json.loads(p.stdout.strip().splitlines()[-1])
            out['kv_format'] = a.kv_format
            print(json.dumps(out), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == '__main__':
    main()
