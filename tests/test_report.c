// `ninja report` end to end at its smoke scale (minutes of training cut to seconds; the numbers mean
// nothing): scripts/report.py must train, evaluate, plot and write a report whose every section is there, a
// second run must keep every finished step, and a wrong use must stop with one clear line.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_util.h"

TestSuite(report, .init = cliutil_setup, .fini = cliutil_teardown, .timeout = 900);

// Runs scripts/report.py with args from the repository root; its output lands in *out (malloc'd).
static int report(const char *args, char **out) {
    const char *build = getenv("KVLAB_BUILD");
    char cmd[1024], log[300];
    snprintf(log, sizeof log, "%s", cliutil_tmp("report.log"));
    snprintf(cmd, sizeof cmd, "python3 scripts/report.py --bin '%s' %s > '%s' 2>&1", build && *build ? build : "build",
             args, log);
    int st = system(cmd);
    *out = cliutil_read_file(log, NULL);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// word occurs in text as a word of its own ("nan", not "tenant").
static int has_word(const char *text, const char *word) {
    size_t n = strlen(word);
    for (const char *p = strstr(text, word); p; p = strstr(p + 1, word)) {
        int before = p > text && ((p[-1] | 32) >= 'a' && (p[-1] | 32) <= 'z');
        int after = (p[n] | 32) >= 'a' && (p[n] | 32) <= 'z';
        if (!before && !after) return 1;
    }
    return 0;
}

Test(report, smoke_run_writes_every_section_and_resumes) {
    cr_assert_eq(system("command -v gnuplot > /dev/null"), 0, "gnuplot is missing: bash scripts/install-deps.sh");
    char args[512], *out;
    const char *dir = cliutil_tmp("report");
    snprintf(args, sizeof args, "--smoke --out '%s'", dir);
    int rc = report(args, &out);
    cr_assert_eq(rc, 0, "report.py failed:\n%s", out);
    cr_assert(strstr(out, "[ 80/80") && strstr(out, "wrote"), "progress lines and the end:\n%s", out);
    free(out);
    char path[400];
    snprintf(path, sizeof path, "%s/REPORT.md", dir);
    char *md = cliutil_read_file(path, NULL);
    cr_assert_not_null(md);
    const char *sections[] = {"## Tier 1: token level", "### Selection and storage at matched bytes", "Δppl [95% CI]",
                              "### The KIVI ablation", "### 2 training seeds", "StreamingLLM", "### The sink control",
                              "### Attention patterns", "### Latency and peak memory", "### Text generation under compression", "## Retrieval: a RULER-like suite",
                              "Against kvpress", "## Tier 2: model level", "MHA → 2 kv heads", "### Uptraining",
                              "### Batched decode", "## Tier 3: system level", "### Flash against naive attention",
                              "### Paged against contiguous", "### Serving: throughput", "### Prefix sharing", "### A slower tier with prefetch",
                              "### Reuse across requests", "## A pretrained model", "## Paper vs ours", "**The question:**",
                              "### What the numbers say"};
    for (size_t i = 0; i < sizeof sections / sizeof *sections; i++)
        cr_assert(strstr(md, sections[i]), "REPORT.md lacks '%s'", sections[i]);
    cr_assert(!has_word(md, "nan") && !has_word(md, "inf"), "a number in the report is not finite");
    cr_assert(!strstr(md, "%%"), "a doubled %% in the report: a string that was never formatted");
    free(md);
    const char *files[] = {"img/tier1-memory-ppl.png", "img/tier1-memory-recall.png", "img/stream-recall.png",
                           "img/stream-sink-bos.png", "img/ruler.png", "img/tier2-loss.png", "img/tier2-uptrain.png",
                           "img/tier2-decode-batch.png", "img/tier3-flash.png", "img/tier3-flash-m.png",
                           "img/attn-layer0.png", "img/attn-summary.png", "img/bos/attn-summary.png", "raw/t1-full.jsonl",
                           "raw/t1-matched.jsonl", "raw/ruler-keep0.5.jsonl", "raw/train-recall.jsonl", "commands.sh"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        size_t n = 0;
        char *b = cliutil_read_file(path, &n);
        cr_assert(b && n > 64, "%s missing or empty", path);
        if (strstr(files[i], ".png")) cr_assert(!memcmp(b, "\x89PNG", 4), "%s is not a PNG", path);
        free(b);
    }
    // a second run keeps every step and rewrites the report from the kept results
    rc = report(args, &out);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(!strstr(out, " done ") && strstr(out, "kept"), "nothing reruns:\n%s", out);
    free(out);
    // a training run that stopped at a checkpoint continues from it (build/train --resume) to its last step
    char ckpt[400], log[400], done[420], eval[400];
    snprintf(ckpt, sizeof ckpt, "%s/work/attn-mha.ckpt", dir);
    snprintf(log, sizeof log, "%s/raw/train-attn-mha.jsonl", dir);
    snprintf(done, sizeof done, "%s.done", ckpt);
    snprintf(eval, sizeof eval, "%s/raw/t2-eval-mha.jsonl", dir);
    cr_assert_eq(remove(done), 0);
    cr_assert_eq(remove(eval), 0);
    Run t = RUN("train", "--preset", "baby", "--steps", "40", "--attn", "mha", "--seed", "3", "--stop-after", "20",
                "--out", ckpt, "--log", log, "--quiet");
    cr_assert_eq(t.status, 0, "%s", t.err);
    cliutil_run_free(&t);
    rc = report(args, &out);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "done       tier 2: train mha") && strstr(out, "done       tier 2: evaluate mha"), "%s", out);
    free(out);
    char *steps = cliutil_read_file(log, NULL);
    cr_assert(steps && strstr(steps, "{\"step\": 21,") && strstr(steps, "{\"step\": 40,"), "resumed at 21, ran to 40");
    free(steps);
    // the output belongs to the smoke scale: another scale must start fresh
    snprintf(args, sizeof args, "--quick --out '%s'", dir);
    rc = report(args, &out);
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert(strstr(out, "holds a --smoke run; give --fresh"), "%s", out);
    free(out);
}

// The intervals and the rule the report's sentences follow (scripts/report_stats.py), against published Wilson
// intervals and cases with a known answer: tests/report_stats_test.py.
Test(report, stats_checks) {
    char *out;
    char cmd[512], log[300];
    snprintf(log, sizeof log, "%s", cliutil_tmp("stats.log"));
    snprintf(cmd, sizeof cmd, "python3 tests/report_stats_test.py > '%s' 2>&1", log);
    int st = system(cmd);
    out = cliutil_read_file(log, NULL);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "tests/report_stats_test.py failed:\n%s", out);
    cr_assert(strstr(out, "OK"), "%s", out);
    free(out);
}
