"""The drift report three ways: drift.json (machines), drift.html (a person; one self-contained
file, inline SVG and CSS, no script, no CDN: it opens offline), and a rich table in the terminal."""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sentiment_cli.files import write_json_atomic

BINS = 20
FEATURES = {  # histogram name → (title, how to read it from detect.Features)
    "confidence": ("Confidence (max probability)", lambda f: f.probabilities.max(axis=1)),
    "positive_probability": ("Probability of the last label", lambda f: f.probabilities[:, -1]),
    "length_chars": ("Text length (characters)", lambda f: f.length_chars),
    "length_tokens": ("Text length (tokens)", lambda f: f.length_tokens),
    "uppercase": ("Share of letters in upper case", lambda f: f.uppercase),
    "oov": ("Share of words outside the training vocabulary", lambda f: f.oov),
}


def histograms(ref, cur) -> dict[str, dict]:
    """Per feature: shared bin edges and each side's share of texts per bin."""
    out = {}
    for name, (title, get) in FEATURES.items():
        a, b = np.asarray(get(ref), dtype=np.float64), np.asarray(get(cur), dtype=np.float64)
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, BINS + 1)
        out[name] = {"title": title, "edges": [round(float(e), 4) for e in edges],
                     "reference": (np.histogram(a, edges)[0] / max(1, len(a))).round(4).tolist(),
                     "current": (np.histogram(b, edges)[0] / max(1, len(b))).round(4).tolist()}
    return out


def _write_text_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write(doc: dict[str, Any], out_dir: Path, page: str | None = None) -> tuple[Path, Path]:
    """drift.json and drift.html (page, else rendered from doc) in out_dir, each written beside
    its target and renamed: a reader never sees half a report."""
    json_path = write_json_atomic(Path(out_dir) / "drift.json", doc)
    html_path = _write_text_atomic(Path(out_dir) / "drift.html", page if page is not None else render_html(doc))
    return json_path, html_path


# --- HTML -------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d1d1f;padding:0 1rem}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin-top:2rem}
.verdict{padding:1rem 1.25rem;border-radius:8px;font-size:1.2rem;font-weight:600}
.drift{background:#fde2e1;color:#8a1c17}.nodrift{background:#e0f4e4;color:#17602b}
.nodata{background:#fff3cd;color:#7a5a00}
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{border-bottom:1px solid #ddd;
padding:.35rem .5rem;text-align:left;vertical-align:top}th{background:#f5f5f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.hit td{background:#fff0ef}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1rem}
figure{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:.5rem}
figcaption{font-weight:600;margin-bottom:.25rem}.legend span{display:inline-block;width:.8rem;height:.8rem;
margin:0 .25rem 0 .75rem;vertical-align:middle}.muted{color:#666}code{font-size:.9em}
.words{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
"""
REF_COLOR, CUR_COLOR = "#8e9aaf", "#e4572e"


def _svg_histogram(name: str, h: dict) -> str:
    """Reference and current shares per bin, drawn side by side in each bin."""
    w, height, pad = 320, 150, 22
    ref, cur, edges = h["reference"], h["current"], h["edges"]
    top = max([*ref, *cur, 1e-9])
    bw = (w - 2 * pad) / len(ref)
    bars = []
    for i, (a, b) in enumerate(zip(ref, cur, strict=True)):
        x = pad + i * bw
        for j, (v, color, side) in enumerate(((a, REF_COLOR, "reference"), (b, CUR_COLOR, "current"))):
            bh = (height - 2 * pad) * v / top
            bars.append(f'<rect class="bar {side}" x="{x + j * bw / 2:.1f}" y="{height - pad - bh:.1f}" '
                        f'width="{max(bw / 2 - 0.5, 0.5):.1f}" height="{bh:.1f}" fill="{color}">'
                        f"<title>{side} {v:.1%} in [{edges[i]:g}, {edges[i + 1]:g})</title></rect>")
    axis = (f'<line x1="{pad}" y1="{height - pad}" x2="{w - pad}" y2="{height - pad}" stroke="#999"/>'
            f'<text x="{pad}" y="{height - 6}" font-size="10">{edges[0]:g}</text>'
            f'<text x="{w - pad}" y="{height - 6}" font-size="10" text-anchor="end">{edges[-1]:g}</text>')
    return (f'<svg role="img" aria-label="{html.escape(h["title"])}" data-feature="{name}" '
            f'viewBox="0 0 {w} {height}" width="100%">{"".join(bars)}{axis}</svg>')


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return html.escape(str(x))


def render_html(doc: dict[str, Any]) -> str:
    e = html.escape
    status = doc["status"]
    css_class = {"drift": "drift", "no drift": "nodrift"}.get(status, "nodata")
    w, r = doc["window"], doc["reference"]
    parts = [f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>sent drift: {e(status)}</title>'
             f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head><body>',
             f'<p class="muted">sent drift · {e(str(doc.get("created")))}</p>',
             f'<div id="verdict" class="verdict {css_class}" data-status="{e(status)}">'
             f'{e(status.upper())}: {e(doc.get("message", ""))}</div>',
             "<h2>Window and reference</h2><table id=\"window\">",
             f"<tr><th>current</th><td>{e(str(w['source']))} ({e(w['kind'])}): <b>{w['n']}</b> texts"
             f" (window {w['requested']}), {e(str(w['first_timestamp']))} → {e(str(w['last_timestamp']))}"
             f"; model version {e(str(w['model_version']))}; left out: {w['left_out_other_model_version']} of "
             f"another model version, {w['corrupt_lines_skipped']} corrupt</td></tr>",
             f"<tr><th>reference</th><td>{e(str(r['model']))} · weights {e(str(r['weights_sha256'])[:12])}… · "
             f"{e(str(r['split']))} split, n={r['n']}, sample {r['sample_n']}</td></tr></table>"]
    if doc["tests"]:
        parts.append('<h2>Tests</h2><table id="tests"><thead><tr><th>test</th><th>method</th>'
                     "<th>statistic</th><th>p</th><th>p (Holm)</th><th>effect</th><th>floor</th>"
                     "<th>n ref / cur</th><th>drift</th></tr></thead><tbody>")
        for t in doc["tests"]:
            parts.append(f'<tr class="{"hit" if t["drift"] else ""}" data-test="{e(t["name"])}">'
                         f"<td>{e(t['name'])}</td><td>{e(t['method'])}</td>"
                         f'<td class="num">{_fmt(t["statistic"])}</td><td class="num">{_fmt(t["p_value"])}</td>'
                         f'<td class="num">{_fmt(t["p_adjusted"])}</td>'
                         f'<td class="num" title="{e(t["effect_name"])}">{_fmt(t["effect"])}</td>'
                         f'<td class="num">{_fmt(t["threshold"])}</td>'
                         f'<td class="num">{t["n_reference"]} / {t["n_current"]}</td><td>{_fmt(t["drift"])}</td></tr>')
        parts.append("</tbody></table><p class=\"muted\">Drift = Holm-adjusted p ≤ "
                     f"{doc['alpha']} and effect ≥ floor. Permutation p-values are (1 + #null ≥ observed)"
                     " / (1 + B).</p>")
    if doc["histograms"]:
        parts.append(f'<h2>Distributions</h2><p class="legend"><span style="background:{REF_COLOR}"></span>'
                     f'reference<span style="background:{CUR_COLOR}"></span>current</p><div class="grid">')
        for name, h in doc["histograms"].items():
            parts.append(f"<figure><figcaption>{e(h['title'])}</figcaption>{_svg_histogram(name, h)}</figure>")
        parts.append("</div>")
    words = doc.get("words") or {}
    if words:
        parts.append('<h2>Words</h2><div class="words">')
        for key, title in (("over", "More frequent now"), ("under", "Less frequent now")):
            parts.append(f'<div><h3>{title}</h3><table id="words-{key}"><tr><th>word</th><th>log-odds</th>'
                         "<th>z</th><th>ref</th><th>cur</th></tr>")
            for x in words.get(key, []):
                parts.append(f"<tr><td>{e(x['word'])}</td><td class=\"num\">{x['log_odds']:.2f}</td>"
                             f"<td class=\"num\">{x['z']:.1f}</td><td class=\"num\">{x['reference_count']}</td>"
                             f"<td class=\"num\">{x['current_count']}</td></tr>")
            parts.append("</table></div>")
        parts.append("</div>")
    if doc.get("typical_texts"):
        parts.append('<h2>Texts from the window</h2><ul id="texts">')
        parts.extend(f"<li>{e(t)}</li>" for t in doc["typical_texts"])
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


# --- terminal ---------------------------------------------------------------------------------


def print_summary(doc: dict[str, Any], json_path: Path, html_path: Path) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    w = doc["window"]
    style = {"drift": "bold red", "no drift": "bold green"}.get(doc["status"], "bold yellow")
    console.print(f"[{style}]{doc['status'].upper()}[/]: {doc.get('message', '')}")
    console.print(f"window: {w['n']} texts from {w['source']} ({w['left_out_other_model_version']} of "
                  f"another model version and {w['corrupt_lines_skipped']} corrupt left out); reference: "
                  f"{doc['reference']['model']} {str(doc['reference']['weights_sha256'])[:12]}…")
    if doc["tests"]:
        table = Table(show_lines=False)
        for col in ("test", "statistic", "p", "p (Holm)", "effect", "floor", "n cur", "drift"):
            table.add_column(col, justify="left" if col == "test" else "right")
        for t in doc["tests"]:
            table.add_row(t["name"], f"{t['statistic']:.4g}", f"{t['p_value']:.3g}", f"{t['p_adjusted']:.3g}",
                          f"{t['effect']:.4f}", f"{t['threshold']:g}", str(t["n_current"]),
                          "[red]yes[/]" if t["drift"] else "no")
        console.print(table)
    console.print(f"→ {json_path}, {html_path}")
