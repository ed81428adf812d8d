/*
 * cmd_eval.c: `kvpack eval`: how faithful compressed KV caches are to the full-precision
 * cache. The measuring is the library's (kvp_eval_text, kvp_eval_recall); this file parses
 * the options, draws the progress bar, prints the table (or CSV, JSON) and writes the plot:
 * an SVG drawn here, or a PNG through gnuplot when it is installed.
 *
 *   kvpack eval -m MODEL -f TEXT --kv SPEC [--kv SPEC ...] [-c CTX] [--csv|--json] [--plot F]
 *   kvpack eval -m MODEL --recall L [--kv SPEC ...]
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define EVAL_MAX_SPECS 32

typedef struct {
    const char *model, *tok, *file, *ref, *plot, *kv_help;
    const char *specs[EVAL_MAX_SPECS];
    int n_specs, n_ctx, skip, threads, recall, seqs, csv, json, max_tokens;
    /* token selection (docs/selection.md): policies crossed with budgets; the recall grid
     * and the passkey test */
    const char *selects[EVAL_MAX_SPECS], *select_help, *budget, *cold;
    int n_selects, grid, passkey, depths;
} eval_args;

static const char *eval_synopsis =
    "-m MODEL (-f TEXT | --recall L) --kv SPEC [--kv SPEC ...] [-c CTX] [--csv|--json] [--plot out.svg]";

/* Moves every "--kv SPEC" (also "--kv A,B") out of argv into a->specs; returns the new argc
 * or -1 after printing an error. */
static int eval_take_specs(int argc, char **argv, eval_args *a) {
    int out = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--kv")) {
            argv[out++] = argv[i];
            continue;
        }
        if (i + 1 >= argc) return cli_usage_error("eval", "option --kv needs a value"), -1;
        for (char *s = argv[++i], *e; *s; s = e + (*e != 0)) {
            e = strchr(s, ',');
            if (!e) e = s + strlen(s);
            if (a->n_specs == EVAL_MAX_SPECS) return cli_usage_error("eval", "at most %d --kv specs", EVAL_MAX_SPECS), -1;
            if (e > s) a->specs[a->n_specs++] = strndup(s, (size_t)(e - s));
        }
    }
    return out;
}

/* ---------------------------------------------------------------------------------------
 * Token selection (docs/selection.md): --select crossed with --kv and --budget into
 * composite specs "KV+POLICY@BUDGET[@COLD]"; the recall grid and the passkey test.
 * ------------------------------------------------------------------------------------- */

/* Moves every "--select SPEC" out of argv into a->selects (a spec keeps its commas). */
static int eval_take_selects(int argc, char **argv, eval_args *a) {
    int out = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--select")) {
            argv[out++] = argv[i];
            continue;
        }
        if (i + 1 >= argc) return cli_usage_error("eval", "option --select needs a value"), -1;
        if (a->n_selects == EVAL_MAX_SPECS) return cli_usage_error("eval", "at most %d --select", EVAL_MAX_SPECS), -1;
        a->selects[a->n_selects++] = argv[++i];
    }
    return out;
}

/* The hot and cold parts of the caches that have a cold tier (quest, sentencekv). */
static void eval_print_cold(const kvp_eval_result *r, int n) {
    char h[32], c[32];
    for (int i = 0; i < n; i++)
        if (r[i].kv_bytes_cold)
            printf("%s: hot %s, cold %s\n", r[i].spec, cli_bytes(r[i].kv_bytes - r[i].kv_bytes_cold, h, sizeof h),
                   cli_bytes(r[i].kv_bytes_cold, c, sizeof c));
}

/* Splits a->budget at commas into budgets (pointers into buf); returns how many. */
static int eval_budgets(const eval_args *a, char *buf, size_t cap, const char **budgets) {
    int n = 0;
    char *save = NULL;
    snprintf(buf, cap, "%s", a->budget ? a->budget : "");
    for (char *t = strtok_r(buf, ",", &save); t && n < EVAL_MAX_SPECS; t = strtok_r(NULL, ",", &save)) budgets[n++] = t;
    return n;
}

/* Candidates: every --kv spec (f16 when none), then each crossed with every policy and budget. */
static int eval_compose(eval_args *a) {
    char buf[256];
    const char *budgets[EVAL_MAX_SPECS];
    int nb = eval_budgets(a, buf, sizeof buf, budgets);
    if (!a->n_selects || !nb) return cli_usage_error("eval", "--select and --budget go together");
    if (!a->n_specs) a->specs[a->n_specs++] = strdup("f16");
    for (int k = 0, base = a->n_specs; k < base; k++)
        for (int s = 0; s < a->n_selects; s++)
            for (int b = 0; b < nb; b++) {
                if (a->n_specs == EVAL_MAX_SPECS) return cli_usage_error("eval", "at most %d caches in all", EVAL_MAX_SPECS);
                char spec[256];
                snprintf(spec, sizeof spec, "%s+%s@%s%s%s", a->specs[k], a->selects[s], budgets[b], a->cold ? "@" : "",
                         a->cold ? a->cold : "");
                a->specs[a->n_specs++] = strdup(spec);
            }
    return 0;
}

static int eval_select_check(eval_args *a) {
    if (a->grid && a->passkey) return cli_usage_error("eval", "give --grid or --passkey, not both");
    if (a->grid && (!a->n_selects || !a->budget)) return cli_usage_error("eval", "--grid needs --select and --budget");
    if (a->grid && a->recall && a->recall != 256 && a->recall != 512 && a->recall != 1024)
        return cli_usage_error("eval", "--recall is 256, 512 or 1024");
    if (a->passkey < 0 || a->depths < 0 || a->depths > 16) return cli_usage_error("eval", "--passkey >= 0, --depths 0..16");
    if (a->plot && (!strstr(a->plot, ".svg") || a->n_selects > 1 || a->passkey))
        return cli_usage_error("eval", "the recall grid's --plot is one .svg for one --select");
    return 0;
}

static int eval_parse(int argc, char **argv, eval_args *a) {
    memset(a, 0, sizeof *a);
    a->threads = 1;
    a->ref = "f32";
    if ((argc = eval_take_specs(argc, argv, a)) < 0) return 2;
    if ((argc = eval_take_selects(argc, argv, a)) < 0) return 2;
    const cli_opt opts[] = {
        {"-m", "--model", CLI_STR, &a->model, "model file (GGUF or llama2.c checkpoint)"},
        {"-z", "--tokenizer", CLI_STR, &a->tok, "tokenizer .bin for a llama2.c checkpoint"},
        {"-f", "--file", CLI_STR, &a->file, "text to feed ('-' for stdin)"},
        {NULL, "--kv", CLI_STR, &a->kv_help, "candidate cache spec; repeat or separate by commas (k4v4,k2v2,mikv)"},
        {NULL, "--ref", CLI_STR, &a->ref, "reference cache spec (default f32)"},
        {"-c", "--ctx-size", CLI_INT, &a->n_ctx, "chunk length in tokens (default: the model's context)"},
        {NULL, "--skip", CLI_INT, &a->skip, "positions per chunk not scored (CTX/2 = llama-perplexity's KL)"},
        {NULL, "--max-tokens", CLI_INT, &a->max_tokens, "use at most this many tokens of the text"},
        {NULL, "--recall", CLI_INT, &a->recall, "run the key-value recall suite of length 256, 512 or 1024 instead"},
        {NULL, "--seqs", CLI_INT, &a->seqs, "recall: the first N sequences of the suite (default all)"},
        {"-t", "--threads", CLI_INT, &a->threads, "threads per context (default 1)"},
        {NULL, "--csv", CLI_FLAG, &a->csv, "print CSV instead of a table"},
        {NULL, "--json", CLI_FLAG, &a->json, "print JSON instead of a table"},
        {NULL, "--plot", CLI_STR, &a->plot, "write a plot against bits per value: .svg, or .png with gnuplot"},
        {NULL, "--select", CLI_STR, &a->select_help, "token selection policy[:params] for every --kv spec; repeat"},
        {NULL, "--budget", CLI_STR, &a->budget, "selection budgets, comma-separated: N tokens or P% (25%,50%)"},
        {NULL, "--cold", CLI_STR, &a->cold, "cold tier of quest/sentencekv: mem (default) or file:PATH"},
        {NULL, "--grid", CLI_FLAG, &a->grid, "recall grid of each --select: budget x length x depth (--recall L: one length)"},
        {NULL, "--depths", CLI_INT, &a->depths, "recall grid: depth buckets of the queried pair (default 4)"},
        {NULL, "--passkey", CLI_INT, &a->passkey, "passkey test with N trials: the full cache, then each --select"},
        {0},
    };
    int rc = cli_parse("eval", eval_synopsis, opts, argc, argv);
    if (rc) return rc;
    if (a->grid || a->passkey) return eval_select_check(a);
    if (!a->file == !a->recall) return cli_usage_error("eval", "give a text with -f FILE or --recall L (one of them)");
    if (a->csv && a->json) return cli_usage_error("eval", "give --csv or --json, not both");
    if (a->n_ctx < 0 || a->skip < 0 || a->threads < 1 || a->threads > 256 || a->seqs < 0 || a->max_tokens < 0)
        return cli_usage_error("eval", "-c, --skip, --seqs, --max-tokens must be >= 0 and -t 1..256");
    if (a->plot && !strstr(a->plot, ".svg") && !strstr(a->plot, ".png"))
        return cli_usage_error("eval", "--plot writes .svg or .png files, not '%s'", a->plot);
    if (a->n_selects || a->budget || a->cold) return eval_compose(a);
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Progress bar (stderr, only on a terminal).
 * ------------------------------------------------------------------------------------- */

typedef struct {
    double t0, last;
    int on;
} eval_bar;

static void eval_progress(void *user, long done, long total) {
    eval_bar *b = user;
    double now = cli_now();
    if (!b->on || (done < total && now - b->last < 0.2)) return;
    b->last = now;
    int w = 40, fill = total > 0 ? (int)(w * done / total) : w;
    double eta = done > 0 ? (now - b->t0) * (double)(total - done) / (double)done : 0;
    fprintf(stderr, "\r[%.*s%*s] %ld/%ld  %.0fs left ", fill, "########################################", w - fill, "",
            done, total, eta);
    if (done >= total) fprintf(stderr, "\r%*s\r", w + 40, "");
    fflush(stderr);
}

/* ---------------------------------------------------------------------------------------
 * Output.
 * ------------------------------------------------------------------------------------- */

static void eval_print_table(const eval_args *a, const kvp_eval_result *r, int n) {
    char b[32];
    if (a->recall) {
        printf("%-28s %9s %11s %8s %13s %10s\n", "cache", "bits/val", "KV bytes", "recall", "correct", "tok/s");
        for (int i = 0; i < n; i++)
            printf("%-28s %9.3f %11s %7.2f%% %6ld/%-6ld %10.1f%s\n", r[i].spec, r[i].bits_per_value,
                   cli_bytes(r[i].kv_bytes, b, sizeof b), 100 * r[i].recall, r[i].recall_correct, r[i].recall_total,
                   r[i].decode_tps, i == 0 ? "  (reference)" : "");
        return;
    }
    printf("%-28s %9s %11s %10s %10s %7s %9s %10s\n", "cache", "bits/val", "KV bytes", "mean KL", "p99 KL", "top-1",
           "ppl ratio", "tok/s");
    for (int i = 0; i < n; i++)
        printf("%-28s %9.3f %11s %10.6f %10.6f %6.2f%% %9.5f %10.1f%s\n", r[i].spec, r[i].bits_per_value,
               cli_bytes(r[i].kv_bytes, b, sizeof b), r[i].st.kl_mean, r[i].st.kl_p99, 100 * r[i].st.top1,
               r[i].st.ppl_ratio, r[i].decode_tps, i == 0 ? "  (reference)" : "");
    printf("%d positions per cache; reference perplexity %.3f\n", r[0].st.n, exp(r[0].st.nll_ref));
}

static void eval_print_csv(const eval_args *a, const kvp_eval_result *r, int n) {
    printf("spec,reference,bits_per_value,kv_bytes,kl_mean,kl_p99,kl_max,top1,ppl_ratio,ppl,decode_tps,positions,"
           "recall,recall_correct,recall_total\n");
    for (int i = 0; i < n; i++)
        printf("%s,%d,%.6f,%llu,%.8g,%.8g,%.8g,%.6f,%.8g,%.6g,%.2f,%d,%.6f,%ld,%ld\n", r[i].spec, i == 0,
               r[i].bits_per_value, (unsigned long long)r[i].kv_bytes, r[i].st.kl_mean, r[i].st.kl_p99,
               r[i].st.kl_max, r[i].st.top1, r[i].st.ppl_ratio, exp(r[i].st.nll_cand), r[i].decode_tps, r[i].st.n,
               a->recall ? r[i].recall : 0.0, r[i].recall_correct, r[i].recall_total);
}

static void eval_print_json(const eval_args *a, const kvp_eval_result *r, int n) {
    printf("{\"model\":\"%s\",\"mode\":\"%s\",\"n_ctx\":%d,\"skip\":%d,\"results\":[", a->model,
           a->recall ? "recall" : "text", a->recall ? a->recall : a->n_ctx, a->skip);
    for (int i = 0; i < n; i++)
        printf("%s{\"spec\":\"%s\",\"reference\":%s,\"bits_per_value\":%.6f,\"kv_bytes\":%llu,\"kl_mean\":%.8g,"
               "\"kl_p99\":%.8g,\"kl_max\":%.8g,\"top1\":%.6f,\"ppl_ratio\":%.8g,\"ppl\":%.6g,\"decode_tps\":%.2f,"
               "\"positions\":%d,\"recall\":%.6f,\"recall_correct\":%ld,\"recall_total\":%ld}",
               i ? "," : "", r[i].spec, i ? "false" : "true", r[i].bits_per_value, (unsigned long long)r[i].kv_bytes,
               r[i].st.kl_mean, r[i].st.kl_p99, r[i].st.kl_max, r[i].st.top1, r[i].st.ppl_ratio,
               exp(r[i].st.nll_cand), r[i].decode_tps, r[i].st.n, r[i].recall, r[i].recall_correct,
               r[i].recall_total);
    printf("]}\n");
}

/* ---------------------------------------------------------------------------------------
 * Plot: y (mean KL on a log scale, or recall in percent) against bits per value.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    double x0, x1, y0, y1; /* data ranges (y in log10 for KL) */
    int logy;
} eval_axes;

enum { SVG_W = 720, SVG_H = 460, SVG_L = 80, SVG_R = 30, SVG_T = 40, SVG_B = 60 };

static double eval_y(const eval_args *a, const kvp_eval_result *r) {
    return a->recall ? 100 * r->recall : log10(fmax(r->st.kl_mean, 1e-9));
}

static eval_axes eval_ranges(const eval_args *a, const kvp_eval_result *r, int n) {
    eval_axes ax = {1e300, -1e300, 1e300, -1e300, !a->recall};
    for (int i = 1; i < n; i++) {
        ax.x0 = fmin(ax.x0, r[i].bits_per_value);
        ax.x1 = fmax(ax.x1, r[i].bits_per_value);
        ax.y0 = fmin(ax.y0, eval_y(a, &r[i]));
        ax.y1 = fmax(ax.y1, eval_y(a, &r[i]));
    }
    ax.x0 = floor(ax.x0) - (ax.x0 == floor(ax.x0));
    ax.x1 = ceil(ax.x1) + (ax.x1 == ceil(ax.x1));
    if (ax.logy) {
        ax.y0 = floor(ax.y0);
        ax.y1 = ceil(ax.y1) + (ax.y1 == ceil(ax.y1));
    } else {
        ax.y0 = fmax(0, floor(ax.y0 / 10) * 10 - 10);
        ax.y1 = 100;
    }
    if (ax.x1 <= ax.x0) ax.x1 = ax.x0 + 1;
    if (ax.y1 <= ax.y0) ax.y1 = ax.y0 + 1;
    return ax;
}

static double eval_px(const eval_axes *ax, double x) {
    return SVG_L + (x - ax->x0) / (ax->x1 - ax->x0) * (SVG_W - SVG_L - SVG_R);
}

static double eval_py(const eval_axes *ax, double y) {
    return SVG_H - SVG_B - (y - ax->y0) / (ax->y1 - ax->y0) * (SVG_H - SVG_T - SVG_B);
}

/* Grid lines with their labels: one per bit, one per power of ten (or 10%). */
static void eval_svg_grid(FILE *f, const eval_axes *ax) {
    int xs = ax->x1 - ax->x0 > 12 ? 2 : 1;
    for (double x = ax->x0; x <= ax->x1 + 1e-9; x += xs)
        fprintf(f, "<line x1='%.1f' y1='%d' x2='%.1f' y2='%d' class='g'/><text x='%.1f' y='%d' class='xt'>%g</text>\n",
                eval_px(ax, x), SVG_T, eval_px(ax, x), SVG_H - SVG_B, eval_px(ax, x), SVG_H - SVG_B + 18, x);
    for (double y = ax->y0; y <= ax->y1 + 1e-9; y += ax->logy ? 1 : 10) {
        fprintf(f, "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' class='g'/>", SVG_L, eval_py(ax, y), SVG_W - SVG_R,
                eval_py(ax, y));
        if (ax->logy) fprintf(f, "<text x='%d' y='%.1f' class='yt'>1e%d</text>\n", SVG_L - 8, eval_py(ax, y) + 4, (int)y);
        else fprintf(f, "<text x='%d' y='%.1f' class='yt'>%g%%</text>\n", SVG_L - 8, eval_py(ax, y) + 4, y);
    }
}

static void eval_svg_escape(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '\'') fputs("&apos;", f);
        else fputc(*s, f);
    }
}

static int eval_write_svg(const eval_args *a, const kvp_eval_result *r, int n) {
    FILE *f = fopen(a->plot, "w");
    if (!f) {
        fprintf(stderr, "kvpack eval: cannot write '%s'\n", a->plot);
        return 1;
    }
    eval_axes ax = eval_ranges(a, r, n);
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' viewBox='0 0 %d %d' "
               "font-family='sans-serif' font-size='12'>\n<style>.g{stroke:#ddd}.xt{text-anchor:middle}"
               ".yt{text-anchor:end}.p{fill:#1f77b4}.l{fill:#333}</style>\n<rect width='100%%' height='100%%' fill='white'/>\n",
            SVG_W, SVG_H, SVG_W, SVG_H);
    fprintf(f, "<text x='%d' y='24' font-size='15'>", SVG_L);
    eval_svg_escape(f, a->recall ? "Key-value recall against KV-cache size" : "KL divergence from the full cache against KV-cache size");
    fprintf(f, "</text>\n");
    eval_svg_grid(f, &ax);
    fprintf(f, "<rect x='%d' y='%d' width='%d' height='%d' fill='none' stroke='#333'/>\n", SVG_L, SVG_T,
            SVG_W - SVG_L - SVG_R, SVG_H - SVG_T - SVG_B);
    fprintf(f, "<text x='%d' y='%d' class='xt'>bits per value (K and V, including scales, minimums, window)</text>\n",
            (SVG_W + SVG_L - SVG_R) / 2, SVG_H - 18);
    fprintf(f, "<text transform='translate(18 %d) rotate(-90)' class='xt'>%s</text>\n", (SVG_H + SVG_T - SVG_B) / 2,
            a->recall ? "recall accuracy" : "mean KL(full || cache), nats");
    for (int i = 1; i < n; i++) {
        double x = eval_px(&ax, r[i].bits_per_value), y = eval_py(&ax, eval_y(a, &r[i]));
        fprintf(f, "<circle cx='%.1f' cy='%.1f' r='4' class='p'/><text x='%.1f' y='%.1f' class='l'>", x, y, x + 6, y - 6);
        eval_svg_escape(f, r[i].spec);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</svg>\n");
    int bad = ferror(f) | fclose(f);
    if (bad) fprintf(stderr, "kvpack eval: error writing '%s'\n", a->plot);
    return bad ? 1 : 0;
}

static int eval_write_png(const eval_args *a, const kvp_eval_result *r, int n) {
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "kvpack eval: gnuplot is not installed, so no PNG; write an SVG instead (--plot out.svg)\n");
        return 1;
    }
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        fprintf(stderr, "kvpack eval: cannot run gnuplot\n");
        return 1;
    }
    fprintf(g, "set terminal pngcairo size 900,560\nset output '%s'\nset grid\nset xlabel 'bits per value'\n", a->plot);
    fprintf(g, a->recall ? "set ylabel 'recall %%'\n" : "set logscale y\nset ylabel 'mean KL (nats)'\n");
    fprintf(g, "plot '-' using 1:2 with points pt 7 notitle, '-' using 1:2:3 with labels offset 1,1 notitle\n");
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 1; i < n; i++)
            fprintf(g, "%g %g \"%s\"\n", r[i].bits_per_value, a->recall ? 100 * r[i].recall : fmax(r[i].st.kl_mean, 1e-9),
                    r[i].spec);
        fprintf(g, "e\n");
    }
    if (pclose(g) != 0) {
        fprintf(stderr, "kvpack eval: gnuplot failed writing '%s'\n", a->plot);
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Main.
 * ------------------------------------------------------------------------------------- */

static int eval_text_tokens(const eval_args *a, kvp_model *m, int **ids, int *n) {
    char *text = NULL;
    size_t len = 0;
    int rc = cli_read_text("eval", a->file, &text, &len);
    if (rc) return rc;
    rc = cli_tokenize("eval", m, text, len, 1, ids, n);
    free(text);
    if (rc) return rc;
    if (a->max_tokens > 0 && *n > a->max_tokens) *n = a->max_tokens;
    if (*n < 2) {
        fprintf(stderr, "kvpack eval: the text has %d token(s); at least 2 are needed\n", *n);
        return 1;
    }
    return 0;
}

static int eval_run(const eval_args *a, kvp_model *m, kvp_eval_result *res) {
    eval_bar bar = {cli_now(), 0, isatty(2)};
    kvp_eval_params p = {a->ref, a->specs, a->n_specs, a->n_ctx, a->skip, a->threads, a->seqs, eval_progress, &bar};
    int rc;
    if (a->recall) {
        rc = kvp_eval_recall(m, a->recall, &p, res);
        return rc < 0 ? cli_fail("eval", "recall evaluation", rc) : 0;
    }
    int *ids = NULL, n = 0;
    if ((rc = eval_text_tokens(a, m, &ids, &n))) return rc;
    rc = kvp_eval_text(m, ids, n, &p, res);
    free(ids);
    return rc < 0 ? cli_fail("eval", "evaluation", rc) : 0;
}

static int eval_output(const eval_args *a, const kvp_eval_result *res) {
    int n = a->n_specs + 1;
    if (a->json) eval_print_json(a, res, n);
    else if (a->csv) eval_print_csv(a, res, n);
    else eval_print_table(a, res, n);
    if (!a->json && !a->csv) eval_print_cold(res, n);
    if (!a->plot) return 0;
    if (a->n_specs == 0) return cli_usage_error("eval", "--plot needs at least one --kv spec");
    return strstr(a->plot, ".png") ? eval_write_png(a, res, n) : eval_write_svg(a, res, n);
}

/* ---- token selection: the recall grid and the passkey test (docs/selection.md) ---- */

static int eval_grid_one(const eval_args *a, kvp_model *m, const char *select, const char *const *budgets, int nb) {
    static const int all[3] = {256, 512, 1024};
    eval_bar bar = {cli_now(), 0, isatty(2)};
    kvp_sel_grid_params p = {a->n_specs ? a->specs[0] : "f16", select, a->cold, budgets, nb, a->recall ? &a->recall : all,
                             a->recall ? 1 : 3, a->depths ? a->depths : 4, a->seqs, a->threads, eval_progress, &bar};
    kvp_sel_grid_cell *cells = calloc((size_t)(nb + 1) * 3 * 16, sizeof *cells);
    char *table = NULL;
    int rc = cells ? kvp_sel_recall_grid(m, &p, cells) : KVP_ENOMEM;
    if (rc == 0) rc = kvp_sel_grid_table(&p, cells, &table);
    if (rc == 0) fputs(table, stdout);
    if (rc == 0 && a->plot) rc = kvp_sel_grid_svg(a->plot, &p, cells);
    free(table);
    free(cells);
    return rc < 0 ? cli_fail("eval", "recall grid", rc) : 0;
}

static int eval_passkey_one(const eval_args *a, kvp_model *m, const char *select, const char *budget, int first) {
    kvp_passkey_params p = {a->n_specs ? a->specs[0] : "f16", select, budget, a->cold, a->n_ctx, a->passkey, 1234,
                            a->threads};
    kvp_passkey_result r[2];
    int rc = kvp_sel_passkey(m, &p, r);
    if (rc < 0) return cli_fail("eval", "passkey", rc);
    if (first) printf("passkey, %d-token prompts: full cache %d/%d\n", r[0].n_tokens, r[0].correct, r[0].total);
    if (select) printf("passkey: %s at %s: %d/%d\n", select, budget, r[1].correct, r[1].total);
    return 0;
}

/* --grid or --passkey: every policy (and budget) in turn; the passkey's full-cache line once. */
static int eval_select_extra(const eval_args *a, kvp_model *m) {
    char buf[256];
    const char *budgets[EVAL_MAX_SPECS];
    int nb = eval_budgets(a, buf, sizeof buf, budgets), rc = 0;
    for (int s = 0; s < a->n_selects && a->grid && rc == 0; s++) rc = eval_grid_one(a, m, a->selects[s], budgets, nb);
    if (a->passkey && (!a->n_selects || !nb)) return eval_passkey_one(a, m, NULL, NULL, 1);
    for (int s = 0; s < a->n_selects && a->passkey && rc == 0; s++)
        for (int b = 0; b < nb && rc == 0; b++) rc = eval_passkey_one(a, m, a->selects[s], budgets[b], !s && !b);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    eval_args a;
    kvp_eval_result res[EVAL_MAX_SPECS + 1];
    kvp_model *m = NULL;
    int rc = eval_parse(argc, argv, &a);
    if (rc == 1) rc = -1; /* --help was printed: success */
    if (rc == 0) rc = cli_open_model("eval", a.model, a.tok, &m);
    if (rc == 0 && (a.grid || a.passkey) && (rc = eval_select_extra(&a, m)) == 0) rc = -1; /* done */
    if (rc == 0) rc = eval_run(&a, m, res);
    if (rc == 0) rc = eval_output(&a, res);
    for (int i = 0; i < a.n_specs; i++) free((void *)a.specs[i]);
    kvp_model_free(m);
    return rc < 0 ? 0 : rc;
}
