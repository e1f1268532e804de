#!/usr/bin/env python3
# Usage: python3 tests/hand/plot_soak.py <soak.csv> <out.svg> [title]
# Draws the broker's RSS (MiB) and open file descriptors over a soak run
# (crates/warren/tests/soak.rs writes the CSV: seconds,pid,rss_kib,fds) as one SVG with two
# panels; a new pid (a restart) is marked with a dashed line. Standard library only.
import csv, sys

rows = [(float(r["seconds"]), r["pid"], int(r["rss_kib"]) / 1024, int(r["fds"]))
        for r in csv.DictReader(open(sys.argv[1]))]
title = sys.argv[3] if len(sys.argv) > 3 else "warren soak"
W, H, L, R, T, B, GAP = 900, 520, 70, 20, 40, 40, 50
ph = (H - T - B - GAP) / 2
tmax = max(t for t, *_ in rows) or 1
restarts = [t for (t, p, *_), (_, q, *_) in zip(rows[1:], rows) if p != q]


def x(t):
    return L + (W - L - R) * t / tmax


def panel(top, values, label, color):
    vmax = max(values) * 1.15 or 1
    y = lambda v: top + ph - ph * v / vmax
    out = [f'<rect x="{L}" y="{top}" width="{W - L - R}" height="{ph}" fill="none" stroke="#999"/>',
           f'<text x="{L}" y="{top - 6}" font-size="13">{label}</text>']
    for i in range(5):
        v = vmax * i / 4
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.0f}</text>')
    for t in restarts:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + ph}" stroke="#c33" stroke-dasharray="4 3"/>')
    # One polyline per process, so a restart is not drawn as a jump.
    segment, last_pid = [], None
    for (t, pid, *_), v in zip(rows, values):
        if pid != last_pid and segment:
            out.append(polyline(segment, color))
            segment = []
        segment.append(f"{x(t):.1f},{y(v):.1f}")
        last_pid = pid
    out.append(polyline(segment, color))
    return out


def polyline(points, color):
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{" ".join(points)}"/>'


svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W / 2}" y="20" font-size="15" text-anchor="middle">{title}</text>']
svg += panel(T, [r[2] for r in rows], "RSS (MiB); dashed: restart with SIGTERM", "#1f5fa8")
svg += panel(T + ph + GAP, [r[3] for r in rows], "open file descriptors", "#2a8a3a")
for i in range(7):
    t = tmax * i / 6
    svg.append(f'<text x="{x(t):.1f}" y="{H - B + 16}" font-size="11" text-anchor="middle">{t / 60:.0f} min</text>'
               if tmax >= 600 else
               f'<text x="{x(t):.1f}" y="{H - B + 16}" font-size="11" text-anchor="middle">{t:.0f} s</text>')
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg) + "\n")
