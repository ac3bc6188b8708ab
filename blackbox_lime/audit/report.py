"""The study summary (``audit summary``) and the self-contained HTML report (``DIR/report.html``).

The report is one file: inline CSS and script, images as ``data:`` URIs, nothing fetched from a
network. It names cases only by id: no file name, path or DICOM patient or study field appears in it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blackbox_lime.audit.flags import BORDER_BAND, FLAG_HELP, FLAGS, SHORTCUT_THRESHOLDS
from blackbox_lime.audit.provenance import versions
from blackbox_lime.audit.records import CaseRecord
from blackbox_lime.audit.store import AuditStore
from blackbox_lime.outputs import _LUT, atomic_write_bytes

REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"


CASE_WARNINGS = CaseRecord.NOTES  # case-level warnings a record may carry, shown with each of its rows
CASE_WARNING_LABELS = {"burned_in": "burnt-in text?", "dicom_out": "no Parametric Map"}


def _rows(case: Any) -> list[dict[str, Any]]:
    """One row per (case, explained finding); a failed or pending case is one row without a finding."""
    base = {"id": case.id, "state": case.state, **({"reason": case.reason} if case.reason else {}),
            "label": case.label, "attempts": case.attempts}
    rec: CaseRecord | None = case.record
    if case.state != "done" or rec is None or not rec.findings:
        return [{**base, "finding": None}]
    json_out = [o for o in rec.outputs if o.endswith(".json")]
    return [{**base, "finding": f.finding, "target": f.target, "target_name": f.finding,
             "target_prob": f.target_prob, "r2": f.r2, "r2_evidence": f.r2_evidence, "fill": rec.fill,
             "queries": rec.queries, "sent": rec.sent, "reused": rec.reused, "flags": f.flags,
             "shares": f.shares, "outputs": f.outputs + json_out, **rec.notes()} for f in rec.findings]


def study_summary(store: AuditStore) -> dict[str, Any]:
    """The study summary and one record per (case, explained finding), without the patch grids.

    A single-class audit has one finding per case (the explained class); a multi-label one a row per
    finding explained, with that finding's flags; ``by_finding`` counts them per finding."""
    cases = store.cases()
    counts = store.counts()
    rows = [r for c in cases for r in _rows(c)]
    done = [r for r in rows if r["state"] == "done"]
    n_done_cases = counts["done"]
    flagged_cases = len({r["id"] for r in done if r.get("flags")})
    flag_counts = {f: sum(f in (r.get("flags") or []) for r in done) for f in FLAGS}
    r2 = [r["r2_evidence"] for r in done if r.get("r2_evidence") is not None]
    by_finding: dict[str, Any] = {}
    for r in done:
        d = by_finding.setdefault(r["finding"], {"explained": 0, "flagged": 0, "flags": {f: 0 for f in FLAGS}})
        d["explained"] += 1
        d["flagged"] += bool(r.get("flags"))
        for f in r.get("flags") or []:
            d["flags"][f] += 1
    return {
        "study": {
            "name": study_name(store),
            "source": source_description(store),
            "skipped": (store.get("pacs") or {}).get("skipped", []),
            "stow": _stow_counts(store),
            "cases": len(cases), **counts,
            "complete": counts["pending"] == 0 and counts["failed"] == 0,
            "explained_findings": len(done),
            "flagged_cases": flagged_cases,
            "flagged_fraction": round(flagged_cases / n_done_cases, 4) if n_done_cases else None,
            "flags": {f: {"cases": n, "fraction": round(n / len(done), 4) if done else None}
                      for f, n in flag_counts.items()},
            "by_finding": by_finding,
            "median_r2_evidence": round(float(np.median(r2)), 4) if r2 else None,
            "model": store.get("model"),
            "seed": store.config.get("--seed"),
            "started": store.get("created"),
            "updated": store.get("updated"),
            "totals": store.totals(),
            **_cost(store),
            "budget": store.get("budget"),
            "request_size": store.get("request_size"),  # [used, max_batch] when the endpoint refused larger requests
        },
        "cases": rows,
    }


def _cost(store: AuditStore) -> dict[str, Any]:
    """What the images sent cost, at the endpoint profile's price per 1,000 images (nothing without a price)."""
    price = store.get("price_per_1k_images")
    if price is None:
        return {}
    return {"price_per_1k_images": price, "cost": round(store.totals()["sent"] * float(price) / 1000.0, 4)}


def study_name(store: AuditStore) -> str:
    """The name the audit's outputs give the study (--study-name): never its folder's path, which may carry a
    patient's name."""
    return str(store.get("study_name") or "study")


def source_description(store: AuditStore) -> str:
    """Where the cases came from, as the shared outputs say it: a folder or manifest (never its path), or the PACS's
    host and the study UIDs (never the URL's query, which may carry a patient's name, nor credentials)."""
    kind = store.get("source_kind")
    if kind != "pacs":
        return f"a {kind or 'folder'} on this site"
    p = store.get("pacs") or {}
    studies = p.get("studies") or []
    which = f"study {studies[0]}" if len(studies) == 1 else f"{len(studies)} studies"
    return f"PACS {p.get('host', '?')} (DICOMweb), {which}"


def _stow_counts(store: AuditStore) -> dict[str, int] | None:
    """How many done cases' maps were stored to PACS (--stow), and how many were not; None without --stow."""
    outcomes = [c.record.stow if c.record is not None else None for c in store.cases(states=("done",))]
    if not any(outcomes):
        return None
    out: dict[str, int] = {}
    for o in outcomes:
        state = (o or {}).get("state", "not tried")
        out[state] = out.get(state, 0) + 1
    return out


def public_config(store: AuditStore) -> dict[str, Any]:
    """The audit's configuration as its shared outputs show it: the source is the study's name, not its path."""
    return {**store.config, "source": study_name(store)}


def mean_evidence_maps(store: AuditStore) -> dict[str, np.ndarray]:
    """Per explained finding, the mean over done cases of each case's positive patch weights, scaled to a
    maximum of 1 per case."""
    maps: dict[str, list[np.ndarray]] = {}
    for c in store.cases(states=("done",)):
        for f in c.record.findings if c.record is not None else []:
            w = np.clip(np.asarray(f.patch_weights, np.float64), 0, None)
            if w.size and w.max() > 0:
                maps.setdefault(f.finding, []).append(w / w.max())
    return {k: np.mean(v, axis=0) for k, v in maps.items() if len({m.shape for m in v}) == 1}


def _png_uri(bgr: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", bgr)
    if not ok:  # pragma: no cover
        raise ValueError("OpenCV could not encode a PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()


def _overlay_uri(path: Path, max_width: int = 800, quality: int = 90) -> str | None:
    """A case's overlay at its own size (at most ``max_width``), as WebP: the card shows it scaled down and a click
    shows it whole. About 15 kB an overlay against 60 kB for a 220-px PNG thumbnail, so 50 cases stay near 1 MB."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    if w > max_width:
        img = cv2.resize(img, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV builds without WebP
        return _png_uri(img)
    return "data:image/webp;base64," + base64.b64encode(data.tobytes()).decode()


def _heatmap(m: np.ndarray, side: int = 280) -> str:
    """A patch-grid map in [0, 1] drawn with the overlays' colours (white 0 to red 1), a border-band outline."""
    idx = np.clip(np.round(127.5 + m * 127.5), 0, 255).astype(np.int64)
    img = cv2.resize(_LUT[idx], (side, round(side * m.shape[0] / m.shape[1])), interpolation=cv2.INTER_NEAREST)
    b = round(side * BORDER_BAND)
    cv2.rectangle(img, (b, b), (img.shape[1] - b, img.shape[0] - b), (90, 90, 90), 1)
    return _png_uri(img)


SHARE_LABELS = {"border": "border", "outside_anatomy": "outside anatomy", "outside_roi": "outside ROI"}


def _share_cell(v: float | None, threshold: float) -> str:
    if v is None:
        return "<td class='num' data-v='-1'>–</td>"
    cls = "num over" if v > threshold else "num"
    return f"<td class='{cls}' data-v='{v:.4f}'>{v:.2f}</td>"


def _when(t: float | None) -> str:
    return "" if t is None else _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _attr(name: str) -> str:
    """A finding's name as one token of a space-separated data-flags attribute."""
    return name.replace(" ", "_")


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a1a1a;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer} .num{text-align:right;font-variant-numeric:tabular-nums}
.flag{display:inline-block;background:#fde2e1;color:#8a1c12;border-radius:3px;padding:0 5px;margin:1px;font-size:12px}
.ok{color:#2d6a2d} .bad{color:#8a1c12;font-weight:600} .muted{color:#666;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #ddd;border-radius:6px;padding:6px;width:224px;font-size:12px}
.card img{width:220px;display:block;cursor:zoom-in} .card.hidden{display:none} pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}
.over{color:#8a1c12;font-weight:600}
#zoom{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:10;cursor:zoom-out;align-items:center;justify-content:center}
#zoom img{max-width:96vw;max-height:92vh;background:#fff} #zoom p{color:#fff;position:fixed;top:4px;left:12px;margin:0}
"""

_SCRIPT = """
function toks(el){return el.getAttribute('data-flags').split(' ').filter(function(t){return t!=='';});}
function flagsOf(el){return toks(el).filter(function(t){return t.indexOf('finding:')!==0;});}
function shown(el,f){return f==='all'||(f==='flagged'&&flagsOf(el).length>0)||(f==='clean'&&flagsOf(el).length===0)
 ||toks(el).indexOf(f)>=0;}
function filterCards(){var f=document.getElementById('flagfilter').value;
 document.querySelectorAll('.card').forEach(function(c){c.classList.toggle('hidden',!shown(c,f));});
 document.querySelectorAll('#cases tbody tr').forEach(function(r){r.style.display=shown(r,f)?'':'none';});}
function zoom(id){var img=document.querySelector("img[data-case='"+id+"'],img[data-case^='"+id+"/']");if(!img)return;
 var z=document.getElementById('zoom');z.querySelector('img').src=img.src;z.querySelector('p').textContent=id+' (click to close)';
 z.style.display='flex';}
window.addEventListener('load',function(){var m=/^#zoom=(.+)$/.exec(location.hash);if(m)zoom(decodeURIComponent(m[1]));});
function sortTable(col){var t=document.getElementById('cases'),b=t.tBodies[0],rows=Array.from(b.rows);
 var asc=t.getAttribute('data-sort')!==String(col);t.setAttribute('data-sort',asc?String(col):'');
 rows.sort(function(a,c){var x=a.cells[col].getAttribute('data-v')||a.cells[col].textContent,
  y=c.cells[col].getAttribute('data-v')||c.cells[col].textContent,nx=parseFloat(x),ny=parseFloat(y);
  var r=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?r:-r;});rows.forEach(function(r){b.appendChild(r);});}
"""


def render_report(out_dir: Path, store: AuditStore) -> str:
    s = study_summary(store)
    st = s["study"]
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             "<title>blackbox-lime audit report</title>", f"<style>{_CSS}</style>", f"<script>{_SCRIPT}</script>",
             "</head><body>", f"<h1>Audit report: {html.escape(study_name(store))}</h1>"]
    status = "complete" if st["complete"] else ("incomplete: " + ", ".join(
        f"{st[k]} {k}" for k in ("pending", "failed") if st[k]))
    parts.append(f"<p class='muted'>blackbox-lime {e(versions()['blackbox-lime'])} · {st['cases']} cases · "
                 f"<span class='{'ok' if st['complete'] else 'bad'}'>{e(status)}</span> · written {e(_when(st['updated']))}</p>")

    parts.append("<h2>Study summary</h2><table>")
    rows = [("source", st["source"]), ("cases", st["cases"]),
            *([("skipped instances (no image)", len(st["skipped"]))] if st["skipped"] else []), ("explained", st["done"]),
            *([("maps stored to PACS (STOW-RS)", ", ".join(f"{n} {k}" for k, n in st["stow"].items()))]
              if st["stow"] else []), ("failed", st["failed"]), ("pending", st["pending"]),
            ("flagged cases", f"{st['flagged_cases']} ({_fmt(st['flagged_fraction'], 3)})"),
            ("median fidelity (evidence R²)", _fmt(st["median_r2_evidence"])),
            ("images sent", st["totals"]["sent"]),
            *([("cost of the images sent", f"{st['cost']:,.2f} at {st['price_per_1k_images']:g} per 1,000 images")]
              if "cost" in st else []),
            ("answers reused from the store", st["totals"]["reused"]),
            ("requests", st["totals"]["requests"]), ("retries", st["totals"]["retries"]),
            ("budget", st["budget"] if st["budget"] is not None else "none")]
    parts += [f"<tr><th>{e(k)}</th><td class='num'>{_fmt(v)}</td></tr>" for k, v in rows]
    parts.append("</table>")

    parts.append("<h2>Flags</h2><table><tr><th>flag</th><th>cases</th><th>fraction</th><th>threshold</th><th>meaning</th></tr>")
    for f in FLAGS:
        d = st["flags"][f]
        thr = f"share &gt; {SHORTCUT_THRESHOLDS[f]:g}" if f in SHORTCUT_THRESHOLDS else ""
        cls = " class='bad'" if d["cases"] else ""
        parts.append(f"<tr><td><code>{f}</code></td><td class='num'{cls}>{d['cases']}</td>"
                     f"<td class='num'>{_fmt(d['fraction'])}</td><td>{thr}</td><td>{e(FLAG_HELP[f])}</td></tr>")
    parts.append("</table>")

    means = mean_evidence_maps(store)
    several = len(st["by_finding"]) > 1
    if several:
        parts.append("<h2>Flags by finding</h2><table><tr><th>finding</th><th>explained</th><th>flagged</th>"
                     + "".join(f"<th><code>{f}</code></th>" for f in FLAGS) + "</tr>")
        for name, d in st["by_finding"].items():
            parts.append(f"<tr><td>{e(str(name))}</td><td class='num'>{d['explained']}</td>"
                         f"<td class='num'>{d['flagged']}</td>"
                         + "".join(f"<td class='num'>{d['flags'][f]}</td>" for f in FLAGS) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Mean evidence map" + ("s by finding" if several else "") + "</h2>")
    if not means:
        parts.append("<p class='muted'>No explained case with positive evidence yet.</p>")
    else:
        parts.append("<div class='cards'>" + "".join(
            f"<div><img alt='mean evidence map of {e(str(name))}' src='{_heatmap(m)}'>"
            + (f"<br><b>{e(str(name))}</b>" if several else "") + "</div>" for name, m in means.items()) + "</div>")
        parts.append("<p class='muted'>The mean over explained cases of each case's positive patch weights (scaled to "
                     "1 per case), on the model's patch grid. The grey frame marks the border band "
                     f"({BORDER_BAND:g} of each side).</p>")

    parts.append("<h2>Cases</h2><p>Show: <select id='flagfilter' onchange='filterCards()'>"
                 "<option value='all'>all cases</option><option value='flagged'>flagged</option>"
                 "<option value='clean'>not flagged</option>"
                 + "".join(f"<option value='{f}'>{f}</option>" for f in FLAGS)
                 + "".join(f"<option value='finding:{e(_attr(str(n)))}'>finding {e(str(n))}</option>"
                           for n in st["by_finding"] if several) + "</select></p>")
    head = ["case", "state", "finding" if several else "class", "P", "fidelity (evidence R²)", "fill", "queries"]
    head += [f"{SHARE_LABELS[k]} share (flag &gt; {SHORTCUT_THRESHOLDS['shortcut_' + k]:g})" for k in SHARE_LABELS]
    head.append("flags")
    parts.append("<p class='muted'>Click a column to sort by it. Each share is the part of the case's positive evidence "
                 "in that region, shown next to the threshold above which the case is flagged.</p>")
    parts.append("<table id='cases'><thead><tr>" + "".join(
        f"<th onclick='sortTable({i})'>{h}</th>" for i, h in enumerate(head)) + "</tr></thead><tbody>")
    cards = []
    for c in s["cases"]:
        flags = c.get("flags") or []
        fl = " ".join(flags + ([f"finding:{_attr(str(c['finding']))}"] if several and c.get("finding") else []))
        badges = "".join(f"<span class='flag'>{e(f)}</span>" for f in flags) + "".join(
            f"<span class='flag' title='{e(c[k])}'>{e(CASE_WARNING_LABELS[k])}</span>" for k in CASE_WARNINGS if c.get(k))
        state = c["state"] if c["state"] != "failed" else f"failed: {c.get('reason', '')}"
        parts.append(f"<tr data-flags='{e(fl)}'><td>{e(c['id'])}</td><td>{e(state)}</td><td>{_fmt(c.get('target_name'))}</td>"
                     f"<td class='num'>{_fmt(c.get('target_prob'))}</td><td class='num'>{_fmt(c.get('r2_evidence'))}</td>"
                     f"<td>{_fmt(c.get('fill'))}</td><td class='num'>{_fmt(c.get('queries'))}</td>"
                     + "".join(_share_cell((c.get("shares") or {}).get(k), SHORTCUT_THRESHOLDS["shortcut_" + k])
                               for k in SHARE_LABELS) + f"<td>{badges}</td></tr>")
        if c["state"] == "done":
            overlay = next((o for o in c.get("outputs") or [] if o.endswith(".overlay.png")), None)
            uri = _overlay_uri(out_dir / overlay) if overlay else None
            key = c["id"] + (f"/{c['finding']}" if several and c.get("finding") else "")
            img = (f"<img alt='overlay of {e(key)}' data-case='{e(key)}' src='{uri}' onclick='zoom(this.dataset.case)'>"
                   if uri else "<p class='muted'>overlay missing</p>")
            cards.append(f"<div class='card' data-flags='{e(fl)}'>{img}<b>{e(c['id'])}</b> · {_fmt(c.get('target_name'))} "
                         f"p={_fmt(c.get('target_prob'))}<br>{badges or '<span class=ok>no flag</span>'}</div>")
    parts.append("</tbody></table><h2>Overlays</h2><div class='cards'>" + "".join(cards) + "</div>")

    cfg = public_config(store)
    prov = {"tool": versions(), "model": st["model"], "seed": st["seed"], "started": _when(st["started"]),
            "written": _when(st["updated"]), "totals": st["totals"], "budget": st["budget"], "configuration": cfg}
    parts.append("<h2>Provenance</h2><p class='muted'>Every input's and output's SHA-256 is in provenance.json; "
                 "<code>blackbox-lime audit verify DIR</code> checks them.</p>"
                 f"<pre>{e(json.dumps(prov, indent=1))}</pre>")
    parts.append("<div id='zoom' onclick=\"this.style.display='none'\"><p></p><img alt='overlay, full size'></div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(out_dir: Path, store: AuditStore) -> Path:
    """(Re)write DIR/summary.json and DIR/report.html, each atomically."""
    summary = study_summary(store)
    atomic_write_bytes(out_dir / SUMMARY_NAME, (json.dumps(summary, indent=1) + "\n").encode())
    atomic_write_bytes(out_dir / REPORT_NAME, render_report(out_dir, store).encode())
    return out_dir / REPORT_NAME
