#!/usr/bin/env python3
"""Prints the JSON lines of scripts/kv-bench.sh as a markdown table (standard library only)."""
import json
import sys


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    if not rows:
        sys.exit("kv-table: no rows in " + path)
    if rows[0].get("task") == "recall":
        dists = list(rows[0]["recall_acc_by_distance"])
        print("| spec | bytes/token (fp16 full) | recall | value chars | " + " | ".join("d=" + d for d in dists) + " |")
        print("|---" * (4 + len(dists)) + "|")
        for r in rows:
            by = r["recall_acc_by_distance"]
            print("| `%s` | %.0f (%.0f) | %.3f (full %.3f) | %.3f | %s |" % (
                r["spec"], r["bytes_per_token"], r["fp16_bytes_per_token"], r["recall_acc"], r["recall_acc_full"],
                r["recall_char_acc"], " | ".join("%.2f" % by[d] for d in dists)))
        return
    if "curve_position" in rows[0]:
        # perplexity against position (--curve): one column per spec, the full cache's alongside
        pos = rows[0]["curve_position"]
        print("| positions | " + " | ".join("`%s`" % r["spec"] for r in rows) + " | full cache |")
        print("|---" * (2 + len(rows)) + "|")
        for k, p in enumerate(pos):
            end = pos[k + 1] - 1 if k + 1 < len(pos) else rows[0]["context"] - 1
            print("| %d-%d | " % (p, end) + " | ".join("%.2f" % r["curve_ppl"][k] for r in rows) +
                  " | %.2f |" % rows[0]["curve_ppl_full"][k])
        return
    print("| spec | context | bytes/token | vs fp16 | ppl | Δppl vs full | KL | top-1 agree | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| `%s` | %d | %.0f | %.3fx | %.4f | %+.2f%% | %.2e | %.4f | %.0f |" % (
            r["spec"], r["context"], r["bytes_per_token"], r["bytes_per_token"] / r["fp16_bytes_per_token"],
            r["ppl"], 100 * (r["ppl"] / r["ppl_full"] - 1), r["kl"], r["top1_agree"], r["decode_tokens_per_s"]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print("usage: scripts/kv-table.py [OUT.jsonl]   (JSON lines of kv-bench.sh or pretrained-bench.sh; stdin without one)")
        sys.exit(0)
    main(sys.argv[1] if len(sys.argv) > 1 else "/dev/stdin")
