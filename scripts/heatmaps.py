#!/usr/bin/env python3
"""Labelled attention heat maps from the text matrices of `build/infer attention --matrix-out DIR`, drawn by
gnuplot (pngcairo). Python 3 standard library only.

Reads DIR/PREFIX-matrices.json (the index infer writes next to the matrices) and writes into OUTDIR:

  PREFIX-layer{L}.png   every head of layer L as a panel titled "layer L, head H" (a grid, head 0 top left);
  PREFIX-summary.png    each layer's mean over its heads ("layer L, mean over N heads"), and one line plot:
                        the attention each query position pays to token 0 (the sink; the start symbol when
                        the model has one), a line per layer, against what uniform attention would pay.

Every heat map has its query position down (0 at the top) and its key position across, the future (keys after
the query) grey, and one colour bar per image: probabilities on a log scale over three decades, 1e-3 (and
below) dark purple to 1 yellow (viridis), the scale of infer's own PNGs; --linear puts 0..1 on a linear one.
Each image's title says which scale it uses.

Usage: python3 scripts/heatmaps.py [--prefix NAME] [--linear] [--panel PX] DIR OUTDIR
  e.g. build/infer attention --ckpt M.ckpt --matrix-out /tmp/m && python3 scripts/heatmaps.py /tmp/m /tmp/m
A bad input (no index, a matrix of the wrong shape, gnuplot missing or failing) is one line on stderr and exit
status 1.
"""
import argparse
import json
import math
import os
import subprocess
import sys

# Viridis at 0, 0.1, ..., 1: the same table as infer/attnmap.c's PNGs.
VIRIDIS = ['#440154', '#482475', '#414487', '#355f8d', '#2a788e', '#21918c', '#22a884', '#44bf70', '#7ad151',
           '#bddf26', '#fde725']
LOG_FLOOR = 1e-3  # the log scale's lowest probability: anything below draws as this
# Lines of the summary's sink plot: colour, dash type and point type all differ from layer to layer, so
# curves that lie on top of each other stay apart where they differ and each stays readable in grey print.
LINE_COLOURS = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9', '#000000', '#f0e442']


class Bad(Exception):
    """A problem with the input: one line for the user."""


def gp_str(s):
    """A gnuplot single-quoted string (a quote inside doubles up)."""
    return "'" + str(s).replace("'", "''") + "'"


def load_index(d, prefix):
    path = os.path.join(d, prefix + '-matrices.json')
    try:
        with open(path) as f:
            idx = json.load(f)
    except FileNotFoundError:
        raise Bad("no index '%s' (write it with build/infer attention ... --matrix-out %s)" % (path, d))
    except (OSError, ValueError) as e:
        raise Bad("cannot read the index '%s': %s" % (path, e))
    try:
        T, L, H = int(idx['T']), int(idx['layers']), int(idx['heads'])
        heads, means = idx['head_files'], idx['mean_files']
        if T < 2 or L < 1 or H < 1 or len(heads) != L or len(means) != L or any(len(r) != H for r in heads):
            raise ValueError('the file lists do not match layers %d x heads %d' % (L, H))
    except (KeyError, TypeError, ValueError) as e:
        raise Bad("the index '%s' is not one infer wrote: %s" % (path, e))
    for name in [n for r in heads for n in r] + means:
        check_matrix(os.path.join(d, name), T)
    return idx


def check_matrix(path, T):
    """The file holds T lines of T numbers (the first and last line are parsed; all lines counted)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise Bad("cannot read the matrix '%s': %s" % (path, e.strerror or e))
    if len(lines) != T:
        raise Bad("matrix '%s' has %d lines, the index says T = %d" % (path, len(lines), T))
    for n in (0, T - 1):
        try:
            row = [float(x) for x in lines[n].split()]
        except ValueError:
            raise Bad("matrix '%s' line %d holds something other than numbers" % (path, n + 1))
        if len(row) != T or any(not (0.0 <= x <= 1.0) for x in row):
            raise Bad("matrix '%s' line %d is not %d probabilities" % (path, n + 1, T))


def sink_column(path):
    """Column 0 (attention on key 0) of a matrix file, one value per query position."""
    with open(path) as f:
        return [float(line.split(None, 1)[0]) for line in f]


def grid(n):
    """Columns and rows for n panels, as square as possible (wider than tall)."""
    cols = math.ceil(math.sqrt(n))
    return cols, math.ceil(n / cols)


def scale_words(linear):
    return 'linear colour scale 0..1' if linear else 'log colour scale %g..1' % LOG_FLOOR


class Canvas:
    """Pixel layout of one image: a title strip, a grid of cols x rows heat-map cells (each `panel` pixels wide,
    panel + CELL_EXTRA high for the title above and the axis label below), an optional wide line panel under
    the grid, and a strip on the right for the colour bar (and the line panel's legend). Panels are placed
    through gnuplot's margins in screen coordinates, so nothing depends on multiplot's own layout."""
    TITLE, BAR, CELL_EXTRA = 50, 160, 40
    PAD_L, PAD_R, PAD_T, PAD_B = 62, 12, 26, 46  # inside a cell: tics + ylabel, gap, title, tics + xlabel

    def __init__(self, cols, rows, panel, line_px=0):
        self.cols, self.rows, self.panel, self.line_px = cols, rows, panel, line_px
        self.w = cols * panel + self.BAR
        self.grid_h = rows * (panel + self.CELL_EXTRA)
        self.h = self.TITLE + self.grid_h + line_px

    def _margins(self, x0, x1, y0, y1):
        """Margins for a plot area from pixel x0..x1 (left to right) and y0..y1 (top to bottom)."""
        return ['set lmargin at screen %.5f' % (x0 / self.w), 'set rmargin at screen %.5f' % (x1 / self.w),
                'set tmargin at screen %.5f' % (1 - y0 / self.h), 'set bmargin at screen %.5f' % (1 - y1 / self.h)]

    def cell(self, i):
        """Margins of heat-map cell i (row-major from the top left)."""
        r, c = divmod(i, self.cols)
        x, y = c * self.panel, self.TITLE + r * (self.panel + self.CELL_EXTRA)
        return self._margins(x + self.PAD_L, x + self.panel - self.PAD_R, y + self.PAD_T,
                             y + self.panel + self.CELL_EXTRA - self.PAD_B)

    def line_panel(self):
        """Margins of the wide panel under the grid (its legend goes in the strip on the right)."""
        y = self.TITLE + self.grid_h
        return self._margins(self.PAD_L + 16, self.cols * self.panel - self.PAD_R, y + self.PAD_T,
                             y + self.line_px - self.PAD_B)

    def colour_bar(self):
        """Turns the colour bar on for the next plot, in the right strip beside the grid."""
        x = self.cols * self.panel + 20
        y0, y1 = self.TITLE + self.PAD_T, self.TITLE + self.grid_h - self.PAD_B
        return ['set colorbox user origin screen %.5f,%.5f size screen %.5f,%.5f front'
                % (x / self.w, 1 - y1 / self.h, 18.0 / self.w, (y1 - y0) / self.h)]

    def preamble(self, out_png, title):
        return [
            "set terminal pngcairo size %d,%d font 'sans,9' noenhanced" % (self.w, self.h),
            'set output %s' % gp_str(out_png),
            "set palette defined (%s)" % ', '.join('%g %s' % (i / 10.0, gp_str(c)) for i, c in enumerate(VIRIDIS)),
            "set multiplot title %s font 'sans,12'" % gp_str(title),
        ]


def tick_step(T):
    for step in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        if T / step <= 5:
            return step
    return 1024


def heat_settings(T, linear):
    lines = [
        'set size ratio -1',
        'set xrange [-0.5:%g]' % (T - 0.5),
        'set yrange [%g:-0.5]' % (T - 0.5),  # query 0 at the top
        "set xlabel 'key position' offset 0,0.5",
        "set ylabel 'query position' offset 1,0",
        'set tics out nomirror scale 0.5',
        'set xtics %d' % tick_step(T),
        'set ytics %d' % tick_step(T),
        # the future (key > query) is NaN, which `with image` leaves out; this grey shows through
        "set object 1 rectangle from graph 0,0 to graph 1,1 behind fillcolor rgb '#808080' fillstyle solid noborder",
        'unset colorbox',
        'set cblabel %s' % gp_str('attention probability' + ('' if linear else ' (log scale)')),
    ]
    if linear:
        lines += ['unset logscale cb', 'set cbrange [0:1]', 'set cbtics 0.2']
    else:
        lines += ['set logscale cb', 'set cbrange [%g:1]' % LOG_FLOOR, "set format cb '%g'"]
    return lines


def heat_plot(path, linear):
    if linear:
        value = '($1 > $2 ? NaN : $3)'
    else:
        value = '($1 > $2 ? NaN : ($3 < %g ? %g : $3))' % (LOG_FLOOR, LOG_FLOOR)
    return 'plot %s matrix using 1:2:%s with image notitle' % (gp_str(path), value)


def heat_panels(cv, d, files, titles, T, linear):
    lines = heat_settings(T, linear)
    for i, (name, title) in enumerate(zip(files, titles)):
        lines += cv.cell(i)
        if i == len(files) - 1:
            lines += cv.colour_bar()
        lines += ['set title %s' % gp_str(title), heat_plot(os.path.join(d, name), linear)]
    return lines


def layer_script(d, idx, l, out_png, linear, panel):
    T, H = idx['T'], idx['heads']
    cv = Canvas(*grid(H), panel)
    start = ', token 0 = start symbol' if idx.get('bos') else ''
    title = 'attention, layer %d: %d heads over %d tokens (%s%s)' % (l, H, T, scale_words(linear), start)
    lines = cv.preamble(out_png, title)
    lines += heat_panels(cv, d, idx['head_files'][l], ['layer %d, head %d' % (l, h) for h in range(H)], T, linear)
    lines += ['unset multiplot', 'unset output']
    return '\n'.join(lines) + '\n'


def running_mean(xs, win):
    out, acc = [], 0.0
    for t, x in enumerate(xs):
        acc += x
        if t >= win:
            acc -= xs[t - win]
        out.append(acc / min(t + 1, win))
    return out


def summary_script(d, idx, out_png, linear, panel):
    T, L, H = idx['T'], idx['layers'], idx['heads']
    cols = max(3, min(L, 6))  # layers in rows of up to 6; the line panel under them is at least 3 cells wide
    rows = math.ceil(L / cols)
    cv = Canvas(cols, rows, panel, line_px=max(320, panel + 40))
    bos = bool(idx.get('bos'))
    title = 'attention, mean over %d heads per layer, %d tokens (%s%s)' % (
        H, T, scale_words(linear), ', token 0 = start symbol' if bos else '')
    lines = cv.preamble(out_png, title)
    lines += heat_panels(cv, d, idx['mean_files'], ['layer %d, mean over %d heads' % (l, H) for l in range(L)],
                         T, linear)
    # the sink plot: column 0 of each layer's mean (line t of a file is query position t), a running mean over
    # `win` rows so the layers' curves are lines rather than overlapping noise
    first = idx.get('first_row', 0)
    win = max(1, T // 32)
    for l in range(L):
        col = running_mean(sink_column(os.path.join(d, idx['mean_files'][l])), win)
        lines += ['$sink%d << EOD' % l] + ['%d %.7g' % (t, x) for t, x in enumerate(col)] + ['EOD']
    uni = running_mean([1.0 / (t + 1) for t in range(T)], win)
    lines += ['$uniform << EOD'] + ['%d %.7g' % (t, x) for t, x in enumerate(uni)] + ['EOD']
    smooth = ' (running mean over %d query positions)' % win if win > 1 else ''
    lines += cv.line_panel() + [
        'unset colorbox', 'unset object 1', 'set size noratio', 'set autoscale xy',
        'set xrange [0:%d]' % (T - 1), 'set yrange [*:1.5]', 'set logscale y', "set format y '%g'",
        'set xtics %d' % tick_step(T), 'set ytics auto', "set grid xtics ytics lc rgb '#dddddd'",
        "set xlabel 'query position' offset 0,0.5",
        "set ylabel %s offset 0,0" % gp_str('attention on token 0' + (' (start symbol)' if bos else '')),
        "set title %s" % gp_str('attention each query position pays to token 0, by layer%s; dotted: row %d, '
                                'where the statistics start' % (smooth, first)),
        "set key outside right top vertical Left reverse font 'sans,9' samplen 4 spacing 1.2",
        "set arrow 1 from %d, graph 0 to %d, graph 1 nohead dt 3 lc rgb '#888888'" % (first, first),
    ]
    every = max(1, T // 12)
    curves = []
    for l in range(L):
        # colour, dash type and point type all differ from layer to layer; a marker every `every` rows
        curves.append("$sink%d using 1:2 with linespoints lw 1.5 lc rgb %s dt %d pt %d ps 0.8 pointinterval %d "
                      "title %s" % (l, gp_str(LINE_COLOURS[l % len(LINE_COLOURS)]), 1 + l % 5, 4 + 2 * (l % 6),
                                    every, gp_str('layer %d' % l)))
    curves.append("$uniform using 1:2 with lines lw 2 dt 2 lc rgb '#444444' title 'uniform attention'")
    lines += ['plot ' + ', \\\n     '.join(curves), 'unset multiplot', 'unset output']
    return '\n'.join(lines) + '\n'


def run_gnuplot(script, gnuplot):
    try:
        p = subprocess.run([gnuplot], input=script, text=True, capture_output=True)
    except FileNotFoundError:
        raise Bad("gnuplot not found ('%s'; bash scripts/install-deps.sh installs it)" % gnuplot)
    if p.returncode != 0:
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        raise Bad('gnuplot failed: %s' % (lines[-1].strip() if lines else 'exit status %d' % p.returncode))


def main(argv):
    ap = argparse.ArgumentParser(
        description="Labelled attention heat maps (gnuplot, pngcairo) from `build/infer attention --matrix-out DIR`: "
                    "OUTDIR/PREFIX-layer{L}.png (a panel per head) and OUTDIR/PREFIX-summary.png (each layer's mean "
                    "over heads and a line plot of the attention on token 0).")
    ap.add_argument('dir', metavar='DIR', help='the --matrix-out directory (holds PREFIX-matrices.json)')
    ap.add_argument('outdir', metavar='OUTDIR', help='an existing directory for the PNGs')
    ap.add_argument('--prefix', default='attn', help='the file name prefix of the index and the PNGs [attn]')
    ap.add_argument('--linear', action='store_true', help='a linear colour scale 0..1 instead of log 1e-3..1')
    ap.add_argument('--panel', type=int, default=300, metavar='PX', help='pixels per panel [300]')
    ap.add_argument('--gnuplot', default='gnuplot', metavar='PROG', help='the gnuplot program [gnuplot]')
    a = ap.parse_args(argv)
    try:
        if not os.path.isdir(a.outdir):
            raise Bad("output directory '%s' does not exist (create it first)" % a.outdir)
        if not 120 <= a.panel <= 2000:
            raise Bad('--panel %d is outside 120..2000 pixels' % a.panel)
        idx = load_index(a.dir, a.prefix)
        written = []
        for l in range(idx['layers']):
            png = os.path.join(a.outdir, '%s-layer%d.png' % (a.prefix, l))
            run_gnuplot(layer_script(a.dir, idx, l, png, a.linear, a.panel), a.gnuplot)
            written.append(png)
        png = os.path.join(a.outdir, a.prefix + '-summary.png')
        run_gnuplot(summary_script(a.dir, idx, png, a.linear, a.panel), a.gnuplot)
        written.append(png)
    except Bad as e:
        print('heatmaps.py: %s' % e, file=sys.stderr)
        return 1
    print('wrote %s' % ', '.join(written))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
