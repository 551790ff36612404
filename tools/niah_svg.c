/* niah_svg.c: the SVG heatmap of `hisa niah` (declared in tools.h): two panels, flat DSA and
 * HISA, needle depth (rows) x context length (columns), red 0 .. green 1, in the style of the
 * HISA paper's NIAH figure, with a legend and footnotes.
 *
 * The layout is sized from its text: an SVG viewer does not wrap or clip for us, so every
 * label's width is estimated (at most about 0.6 em per character of sans-serif, 0.66 em bold,
 * for the characters used here) and the panels, margins and the picture grow to hold the title,
 * the subtitle, the axis labels and the footnotes without overlap, whatever the number of
 * contexts. */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "tools.h"

#define TITLE "Needle in a haystack: recall of the needle in the top-k selection"
#define X_LABEL "context length (tokens)"
#define Y_LABEL "needle depth"

/* Estimated width in pixels of s at font size px. */
static int text_w(const char *s, int px, int bold) {
    return (int)((double)strlen(s) * px * (bold ? 0.66 : 0.6)) + 1;
}

static int imax(int a, int b) { return a > b ? a : b; }

const char *tool_ctx_label(int32_t c, char *buf, size_t n) {
    if (c % (1 << 20) == 0) snprintf(buf, n, "%dM", c >> 20);
    else if (c % 1024 == 0) snprintf(buf, n, "%dK", c >> 10);
    else snprintf(buf, n, "%d", c);
    return buf;
}

/* Red (0) through yellow (0.5) to green (1). */
static void recall_color(double v, char *buf, size_t n) {
    if (v < 0) v = 0;
    if (v > 1) v = 1;
    int r, g;
    if (v < 0.5) {
        r = 215;
        g = (int)(48 + (217 - 48) * (v / 0.5));
    } else {
        r = (int)(215 - (215 - 26) * ((v - 0.5) / 0.5));
        g = (int)(217 - (217 - 150) * ((v - 0.5) / 0.5));
    }
    snprintf(buf, n, "#%02x%02x%02x", r, g, 65);
}

/* s as XML character data. */
static void put_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else fputc(*s, f);
    }
}

/* A column's label: the context, with "*" when the column has a footnote. */
static const char *col_label(const tool_niah_plot *p, int ci, char *buf, size_t n) {
    char c[16];
    snprintf(buf, n, "%s%s", tool_ctx_label(p->ctx[ci], c, sizeof c),
             p->col_note && p->col_note[ci] ? "*" : "");
    return buf;
}

typedef struct svg_layout {
    int cw, ch, left, top, gap, panel_w, panel_h, legend_x, width, height, n_notes;
} svg_layout;

/* Cell sizes, margins and the picture's size, from the widths of the texts. */
static void layout(const tool_niah_plot *p, svg_layout *l) {
    assert(p && l && p->nc >= 1 && p->nd >= 1);
    char buf[64];
    int lab_w = 0, dep_w = 0, right = 0;
    for (int ci = 0; ci < p->nc; ci++)
        lab_w = imax(lab_w, text_w(col_label(p, ci, buf, sizeof buf), 11, 0));
    for (int di = 0; di < p->nd; di++) {
        snprintf(buf, sizeof buf, "%g%%", p->dep[di]);
        dep_w = imax(dep_w, text_w(buf, 11, 0));
    }
    *l = (svg_layout){.ch = 26, .top = 66, .gap = 60};
    l->left = imax(64, 24 + dep_w + 8); /* the rotated y label, then the depth labels */
    l->cw = imax(58, lab_w + 10);
    /* a panel is at least as wide as its axis label and its title */
    int need = imax(text_w(X_LABEL, 11, 0), text_w("Flat DSA", 13, 1)) + 12;
    if (l->cw * p->nc < need) l->cw = (need + p->nc - 1) / p->nc;
    l->panel_w = l->cw * p->nc;
    l->panel_h = imax(l->ch * p->nd, text_w(Y_LABEL, 11, 0) - 40);
    l->legend_x = l->left + 2 * l->panel_w + l->gap + 24;
    right = l->legend_x + 20 + text_w("1.0", 11, 0);
    right = imax(right, l->left + text_w(TITLE, 15, 1));
    right = imax(right, l->left + text_w(p->subtitle, 11, 0));
    for (int ci = 0; ci < p->nc; ci++)
        if (p->col_note && p->col_note[ci]) {
            right = imax(right, l->left + text_w(p->col_note[ci], 11, 0));
            l->n_notes++;
        }
    l->width = right + 12;
    l->height = l->top + l->panel_h + 56 + 16 * l->n_notes;
}

/* One panel: its title, the cells, the column labels and the x axis label (depth labels on
 * the first). */
static void panel(FILE *f, const tool_niah_plot *p, const svg_layout *l, int which) {
    const double *rec = which == 0 ? p->rec_flat : p->rec_hisa;
    int x0 = l->left + which * (l->panel_w + l->gap);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"13\" font-weight=\"bold\">%s</text>\n", x0,
            l->top - 8, which == 0 ? "Flat DSA" : "HISA");
    for (int di = 0; di < p->nd; di++) {
        for (int ci = 0; ci < p->nc; ci++) {
            double v = rec[di * p->nc + ci];
            char col[16];
            recall_color(v, col, sizeof col);
            int x = x0 + ci * l->cw, y = l->top + di * l->ch;
            fprintf(f,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" "
                    "stroke=\"white\"/>\n"
                    "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.2f</text>\n",
                    x, y, l->cw, l->ch, col, x + l->cw / 2, y + l->ch / 2 + 4, v);
        }
        if (which == 0)
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%g%%</text>\n", x0 - 6,
                    l->top + di * l->ch + l->ch / 2 + 4, p->dep[di]);
    }
    for (int ci = 0; ci < p->nc; ci++) {
        char lab[24];
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                x0 + ci * l->cw + l->cw / 2, l->top + p->nd * l->ch + 16,
                col_label(p, ci, lab, sizeof lab));
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">" X_LABEL "</text>\n",
            x0 + l->panel_w / 2, l->top + p->nd * l->ch + 36);
}

/* The color scale at the right. */
static void legend(FILE *f, const svg_layout *l, int rows_h) {
    int lx = l->legend_x;
    for (int i = 0; i <= 10; i++) {
        char col[16];
        recall_color(1.0 - i / 10.0, col, sizeof col);
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"16\" height=\"%d\" fill=\"%s\"/>\n", lx,
                l->top + i * rows_h / 11, rows_h / 11 + 1, col);
    }
    fprintf(f,
            "<text x=\"%d\" y=\"%d\">1.0</text>\n<text x=\"%d\" y=\"%d\">0.0</text>\n"
            "<text x=\"%d\" y=\"%d\">recall</text>\n",
            lx + 20, l->top + 10, lx + 20, l->top + rows_h, lx - 4, l->top - 8);
}

int tool_niah_svg(const char *path, const tool_niah_plot *p) {
    assert(path && p && p->subtitle);
    svg_layout l;
    layout(p, &l);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int rows_h = p->nd * l.ch;
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "font-family=\"sans-serif\" font-size=\"11\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            "<text x=\"%d\" y=\"20\" font-size=\"15\" font-weight=\"bold\">" TITLE "</text>\n"
            "<text x=\"%d\" y=\"38\" fill=\"#555\">",
            l.width, l.height, l.left, l.left);
    put_text(f, p->subtitle);
    fprintf(f, "</text>\n");
    panel(f, p, &l, 0);
    panel(f, p, &l, 1);
    int cy = l.top + l.panel_h / 2;
    fprintf(f,
            "<text x=\"14\" y=\"%d\" transform=\"rotate(-90 14 %d)\" text-anchor=\"middle\">"
            Y_LABEL "</text>\n",
            cy, cy);
    legend(f, &l, rows_h);
    for (int ci = 0, line = 0; ci < p->nc; ci++) {
        if (!p->col_note || !p->col_note[ci]) continue;
        fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#555\">", l.left,
                l.top + l.panel_h + 62 + 16 * line++);
        put_text(f, p->col_note[ci]);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? 0 : -1;
}
