#!/usr/bin/env python3
"""Load for build/serve: C concurrent clients each send R requests to /v1/completions with streaming on, and
the script reports aggregate tokens/s and the latency distribution (time to first token, whole request).

  python3 scripts/serve-load.py [--url http://127.0.0.1:8080] [--clients 8] [--requests 4]
                                [--max-tokens 100] [--prompt TEXT] [--json]

Start the server first (build/serve --ckpt FILE). Each client uses its own tenant (X-Tenant: client-N), so
prefix reuse happens only within a client's own repeated prompts.
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


def one_request(url, tenant, body):
    """Sends one streaming completion; returns (seconds to the first token, seconds in all, tokens)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
    t0 = time.perf_counter()
    conn.request('POST', '/v1/completions', body=json.dumps(body),
                 headers={'Content-Type': 'application/json', 'X-Tenant': tenant})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError('HTTP %d: %s' % (resp.status, resp.read()[:200]))
    first, tokens = None, 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith('data: ') or line == 'data: [DONE]':
            continue
        text = json.loads(line[6:])['choices'][0]['text']
        if text:
            tokens += len(text)  # characters are tokens here
            if first is None:
                first = time.perf_counter() - t0
    conn.close()
    return first if first is not None else float('nan'), time.perf_counter() - t0, tokens


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--url', default='http://127.0.0.1:8080')
    ap.add_argument('--clients', type=int, default=8)
    ap.add_argument('--requests', type=int, default=4, help='requests per client, one after another')
    ap.add_argument('--max-tokens', type=int, default=100)
    ap.add_argument('--prompt', default='ROMEO:')
    ap.add_argument('--json', action='store_true')
    a = ap.parse_args()
    if a.clients < 1 or a.requests < 1 or a.max_tokens < 1:
        sys.exit('serve-load: --clients, --requests and --max-tokens must be at least 1')
    results, errors = [], []
    lock = threading.Lock()

    def client(i):
        for r in range(a.requests):
            body = {'prompt': a.prompt, 'max_tokens': a.max_tokens, 'temperature': 0.8, 'seed': 1000 * i + r,
                    'stream': True}
            try:
                res = one_request(a.url, 'client-%d' % i, body)
            except Exception as e:  # report it, keep the others going
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if not results:
        sys.exit('serve-load: every request failed: %s' % (errors[0] if errors else 'no requests'))
    ttft = [r[0] for r in results]
    total = [r[1] for r in results]
    tokens = sum(r[2] for r in results)
    out = {'clients': a.clients, 'requests': len(results), 'errors': len(errors), 'max_tokens': a.max_tokens,
           'wall_s': round(wall, 3), 'tokens': tokens, 'tokens_per_s': round(tokens / wall, 1),
           'ttft_ms_p50': round(1e3 * statistics.median(ttft), 2), 'ttft_ms_p95': round(1e3 * percentile(ttft, 95), 2),
           'latency_ms_p50': round(1e3 * statistics.median(total), 1),
           'latency_ms_p95': round(1e3 * percentile(total, 95), 1)}
    if a.json:
        print(json.dumps(out))
    else:
        print('%(clients)d clients, %(requests)d requests (%(errors)d failed), %(tokens)d tokens in %(wall_s)s s: '
              '%(tokens_per_s)s tokens/s; first token p50 %(ttft_ms_p50)s ms, p95 %(ttft_ms_p95)s ms; '
              'request p50 %(latency_ms_p50)s ms, p95 %(latency_ms_p95)s ms' % out)
    if errors:
        print('serve-load: first error: %s' % errors[0], file=sys.stderr)


if __name__ == '__main__':
    main()
