/*
 * cmd_demo.c: `kvpack demo`: what kvpack is for, in under a minute, with no model file.
 *
 * kvpack builds the key-value recall model of ../shared/models/kvrecall-format.txt in
 * memory (an induction circuit constructed weight by weight, src/model/synth_recall.c): a
 * real two-layer transformer whose answers exist only in its KV cache. Each row of the demo
 * runs the reference recall suites (256, 512 and 1024 tokens, fed token by token) through
 * one cache spec or selection policy and reports recall accuracy, bytes per token, the time
 * it took, and a sentence on why it kept or lost the answers.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *label;  /* shown in the table */
    const char *kv;     /* cache spec */
    const char *select; /* selection policy or NULL */
    const char *budget;
    const char *why_kept, *why_lost;
} demo_row;

static const demo_row demo_rows[] = {
    {"full cache (f16)", "f16", NULL, NULL, "every key and value kept at 16 bits: the reference", "the reference itself failed: a bug"},
    {"KIVI 8-bit", "k8v8", NULL, NULL, "8-bit keys (per channel) and values (per token) keep every match score far above the rest", "8-bit noise should not cost answers: a bug"},
    {"KIVI 4-bit", "k4v4", NULL, NULL, "4-bit groups of 32 still separate the matching key (score ~72) from the others (<= 48)", "4-bit noise blurred the gap between matching and other keys"},
    {"KIVI 3-bit", "k3v3", NULL, NULL, "3 bits per value still leave the match margin wider than the noise", "at 3 bits the key noise starts to close the match margin"},
    {"KIVI 2-bit", "k2v2", NULL, NULL, "2-bit keys per channel plus the 128-token full-precision window are enough here", "2-bit keys blur some matches: the answer's key no longer wins"},
    {"MiKV 3-bit / 7-bit", "mikv", NULL, NULL, "recent and most attended blocks keep 7 bits, the rest are demoted to 3 bits, never dropped", "demoted 3-bit tokens lost the match margin"},
    {"StreamingLLM 50%", "f16", "streaming", "50%", "sinks plus a recent window happened to hold the queried pairs", "only sinks and recent tokens survive: older pairs are gone"},
    {"StreamingLLM 25%", "f16", "streaming", "25%", "sinks plus a recent window happened to hold the queried pairs", "only sinks and recent tokens survive: older pairs are gone"},
    {"H2O 50%", "f16", "h2o", "50%", "past attention kept the pairs that were asked about", "keys are asked once, late: past attention cannot know which pairs matter"},
    {"H2O 25%", "f16", "h2o", "25%", "past attention kept the pairs that were asked about", "keys are asked once, late: past attention cannot know which pairs matter"},
    {"SnapKV 50%", "f16", "snapkv", "50%", "the observation window's attention picked the queried pairs", "fed token by token, the observation window sees no future query: pairs evicted early are lost"},
    {"SnapKV 25%", "f16", "snapkv", "25%", "the observation window's attention picked the queried pairs", "fed token by token, the observation window sees no future query: pairs evicted early are lost"},
    {"KVCrush 50%", "f16", "kvcrush", "50%", "head-behaviour representatives kept enough of the evicted pairs", "representatives of evicted groups cannot stand in for one specific pair"},
    {"KVCrush 25%", "f16", "kvcrush", "25%", "head-behaviour representatives kept enough of the evicted pairs", "representatives of evicted groups cannot stand in for one specific pair"},
    {"Quest 50%", "f16", "quest", "50%", "nothing is evicted: page key bounds point each query at the page holding its pair", "the page bound of the answer's page ranked below the budget"},
    {"Quest 25%", "f16", "quest", "25%", "nothing is evicted: page key bounds point each query at the page holding its pair", "the page bound of the answer's page ranked below the budget"},
    {"SentenceKV 50%", "f16", "sentencekv", "50%", "the current query's mean matched the block holding its pair, retrieved from the cold tier", "block means blur single pairs: the answer's block was not among the most similar"},
    {"SentenceKV 25%", "f16", "sentencekv", "25%", "the current query's mean matched the block holding its pair, retrieved from the cold tier", "block means blur single pairs: the answer's block was not among the most similar"},
};
#define DEMO_NROWS ((int)(sizeof demo_rows / sizeof demo_rows[0]))
#define DEMO_NLEN 3
static const int demo_lengths[DEMO_NLEN] = {256, 512, 1024};

typedef struct {
    long correct[DEMO_NLEN], total[DEMO_NLEN];
    double bpt[2], seconds; /* hot and cold KV bytes per token after the 1024-token suite */
    int failed;
    char err[256];
} demo_result;

typedef struct {
    int seqs, threads, quiet;
    const char *plot;
} demo_args;

/* Runs one suite (its first `seqs` sequences) through one context. */
static int demo_suite(kvp_ctx *ctx, int L, int seqs, long *correct, long *total, double bpt[2]) {
    kvp_recall_suite s;
    int rc = kvp_recall_suite_get(L, &s);
    if (rc < 0) return rc;
    int *tok = malloc(sizeof(int) * (size_t)L), *ans = malloc(sizeof(int) * (size_t)s.Q);
    if (!tok || !ans) rc = KVP_ENOMEM;
    for (int i = 0; rc == 0 && i < seqs && i < s.n_seqs; i++) {
        int ok = 0;
        rc = kvp_recall_generate(s.seed0 + (uint64_t)i, L, s.N, s.Q, tok, ans);
        if (rc == 0) rc = kvp_recall_score(ctx, tok, L, ans, s.Q, &ok);
        *correct += ok;
        *total += s.Q;
    }
    kvp_kv_stats st;
    kvp_ctx_kv_stats(ctx, &st);
    if (kvp_ctx_pos(ctx) > 0) {
        bpt[0] = (double)st.bytes_hot / kvp_ctx_pos(ctx);
        bpt[1] = (double)st.bytes_cold / kvp_ctx_pos(ctx);
    }
    free(tok);
    free(ans);
    return rc;
}

static void demo_progress(const demo_args *a, int row, int li) {
    if (a->quiet) return;
    int done = row * DEMO_NLEN + li, total = DEMO_NROWS * DEMO_NLEN, w = 30, fill = done * w / total;
    fprintf(stderr, "\r[%.*s%*s] %3d%%  %-26s", fill, "##############################", w - fill, "", 100 * done / total,
            row < DEMO_NROWS ? demo_rows[row].label : "done");
    if (done == total) fputc('\n', stderr);
}

static void demo_run_row(kvp_model *m, const demo_args *a, int r, demo_result *res) {
    const demo_row *row = &demo_rows[r];
    double t0 = cli_now();
    for (int li = 0; li < DEMO_NLEN && !res->failed; li++) {
        demo_progress(a, r, li);
        kvp_ctx_params p = kvp_ctx_default_params();
        p.n_ctx = demo_lengths[li];
        p.n_threads = a->threads;
        p.kv = row->kv;
        p.select = row->select;
        p.budget = row->budget;
        kvp_ctx *ctx = NULL;
        int rc = kvp_ctx_new(m, &p, &ctx);
        if (rc == 0) rc = demo_suite(ctx, demo_lengths[li], a->seqs, &res->correct[li], &res->total[li], res->bpt);
        if (rc < 0) {
            res->failed = 1;
            snprintf(res->err, sizeof res->err, "%s (%s)", kvp_errmsg(), kvp_strerror(rc));
        }
        kvp_ctx_free(ctx);
    }
    res->seconds = cli_now() - t0;
}

static double demo_acc(const demo_result *r, int li) {
    return r->total[li] ? 100.0 * r->correct[li] / r->total[li] : 0;
}

static void demo_print(const demo_result *res, double full_bpt) {
    printf("\n%-24s %7s %7s %7s %12s %5s %6s  %s\n", "cache", "256", "512", "1024", "hot B/tok", "cold", "time", "why");
    for (int r = 0; r < DEMO_NROWS; r++) {
        const demo_result *x = &res[r];
        if (x->failed) {
            printf("%-24s  error: %s\n", demo_rows[r].label, x->err);
            continue;
        }
        int kept = demo_acc(x, 0) >= 95 && demo_acc(x, 1) >= 95 && demo_acc(x, 2) >= 95;
        printf("%-24s %6.1f%% %6.1f%% %6.1f%% %5.0f (%3.0f%%) %5.0f %5.1fs  %s\n", demo_rows[r].label, demo_acc(x, 0),
               demo_acc(x, 1), demo_acc(x, 2), x->bpt[0], full_bpt > 0 ? 100 * x->bpt[0] / full_bpt : 0, x->bpt[1],
               x->seconds, kept ? demo_rows[r].why_kept : demo_rows[r].why_lost);
    }
}

/* A grouped bar chart of accuracy per row and length, as SVG. */
static int demo_plot(const char *path, const demo_result *res) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return 1;
    int rowh = 26, left = 190, width = 760, h = 60 + DEMO_NROWS * rowh;
    static const char *colors[DEMO_NLEN] = {"#4e79a7", "#f28e2b", "#59a14f"};
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' font-family='sans-serif' font-size='12'>\n"
               "<rect width='100%%' height='100%%' fill='white'/>\n"
               "<text x='%d' y='18' font-size='14'>kvpack demo: key-value recall accuracy per cache (256 / 512 / 1024 tokens)</text>\n",
            width, h, left);
    for (int g = 0; g <= 4; g++)
        fprintf(f, "<line x1='%d' y1='30' x2='%d' y2='%d' stroke='#ddd'/><text x='%d' y='%d' text-anchor='middle'>%d%%</text>\n",
                left + g * (width - left - 20) / 4, left + g * (width - left - 20) / 4, h - 20,
                left + g * (width - left - 20) / 4, h - 6, g * 25);
    for (int r = 0; r < DEMO_NROWS; r++) {
        int y = 34 + r * rowh;
        fprintf(f, "<text x='%d' y='%d' text-anchor='end'>%s</text>\n", left - 6, y + 15, demo_rows[r].label);
        for (int li = 0; li < DEMO_NLEN; li++)
            fprintf(f, "<rect x='%d' y='%d' width='%.1f' height='7' fill='%s'/>\n", left, y + 3 + li * 7,
                    demo_acc(&res[r], li) * (width - left - 20) / 100.0, colors[li]);
    }
    fprintf(f, "</svg>\n");
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) { remove(tmp); return 1; }
    return 0;
}

static int demo_load_model(kvp_model **m, void **image) {
    size_t size = 0;
    int rc = kvp_synth_recall_gguf(image, &size);
    if (rc == 0) rc = kvp_model_load_memory(*image, size, m);
    return rc < 0 ? cli_fail("demo", "building the recall model", rc) : 0;
}

int cmd_demo(int argc, char **argv) {
    demo_args a = {16, 1, 0, NULL};
    const cli_opt opts[] = {
        {"-n", "--sequences", CLI_INT, &a.seqs, "sequences per suite, 1..64 (default 16; 64 = the full reference suites)"},
        {"-t", "--threads", CLI_INT, &a.threads, "threads (default 1)"},
        {NULL, "--plot", CLI_STR, &a.plot, "also write the accuracy chart as SVG to this path"},
        {"-q", "--quiet", CLI_FLAG, &a.quiet, "no progress bar"},
        {0},
    };
    int rc = cli_parse("demo", "[-n 16] [-t 1] [--plot demo.svg]", opts, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (a.seqs < 1 || a.seqs > 64 || a.threads < 1 || a.threads > 256)
        return cli_usage_error("demo", "-n must be 1..64 and -t 1..256");
    kvp_model *m = NULL;
    void *image = NULL;
    if ((rc = demo_load_model(&m, &image))) { free(image); return rc; }
    printf("kvpack demo: a 2-layer transformer built by construction (an induction circuit, no training, no file)\n"
           "answers multi-query key-value recall: 'k17 v42 ... ? k17' -> v42. Every answer exists only in the KV\n"
           "cache, so a lost or blurred key is a wrong answer. %d sequences per suite, fed token by token.\n", a.seqs);
    demo_result res[DEMO_NROWS];
    memset(res, 0, sizeof res);
    double t0 = cli_now();
    for (int r = 0; r < DEMO_NROWS; r++) demo_run_row(m, &a, r, &res[r]);
    demo_progress(&a, DEMO_NROWS, 0);
    demo_print(res, res[0].bpt[0]);
    printf("\ntotal %.1f s. hot B/tok: KV bytes in fast memory after a 1024-token sequence, per token (share of the\n"
           "full cache in parentheses); cold: bytes per token in the cold tier of the retrieval policies.\n"
           "Reproduce a row: kvpack eval -m recall.gguf --recall 1024 --kv SPEC [--select P --budget B]\n"
           "(kvpack synth --recall -o recall.gguf writes the model).\n",
           cli_now() - t0);
    rc = 0;
    if (a.plot && demo_plot(a.plot, res)) {
        fprintf(stderr, "kvpack demo: cannot write the plot to '%s'\n", a.plot);
        rc = 1;
    }
    for (int r = 0; r < DEMO_NROWS; r++) rc |= res[r].failed;
    kvp_model_free(m);
    free(image);
    return rc;
}
