"""One self-contained HTML page (inline CSS and SVG; no script, no network) and its
Markdown twin, from an :class:`~.evidence.Evidence`.  Every value is escaped."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

from weightguard._internal.report.access import Listed
from weightguard._internal.report.evidence import ATTENTION, FAIL, PASS, Evidence

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f6f7f9;color:#1b1f24}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;
border-bottom:1px solid #d0d7de;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:#57606a;font-size:12px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;background:#fff}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;
word-break:break-all}
.verdict{border-radius:6px;padding:14px 18px;margin:16px 0;border:2px solid}
.verdict h2{border:0;margin:0 0 8px;padding:0}
.answers{margin:10px 0 0;background:rgba(255,255,255,.6)}.answers th{width:260px;background:none}
.PASS{background:#e6f4ea;border-color:#2da44e}.ATTENTION{background:#fff8c5;border-color:#bf8700}
.FAIL{background:#ffebe9;border-color:#cf222e}
.tag{display:inline-block;font-weight:700;border-radius:4px;padding:0 6px;margin-right:6px;
font-size:12px}
.tag.PASS,.tag.OK{background:#2da44e;color:#fff}.tag.ATTENTION,.tag.UNSIGNED{background:#bf8700;
color:#fff}.tag.FAIL,.tag.BROKEN,.tag.CHANGED,.tag.UNREADABLE,.tag.UNVERIFIABLE{background:#cf222e;
color:#fff}.tag.NONE{background:#6e7781;color:#fff}
.warn{background:#fff8c5;border-left:4px solid #bf8700;padding:6px 10px;margin:8px 0}
.bad{background:#ffebe9;border-left:4px solid #cf222e;padding:6px 10px;margin:8px 0}
pre{background:#fff;border:1px solid #d0d7de;padding:8px;overflow-x:auto}
.plot{background:#fff;border:1px solid #d0d7de;padding:4px;overflow-x:auto}
.plot svg{max-width:100%;height:auto}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], num: Sequence[int] = ()) -> str:
    out = ["<table>"]
    if any(head):
        out += ["<thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead>"]
    out.append("<tbody>")
    n = 0
    for row in rows:
        n += 1
        cells = []
        for i, c in enumerate(row):
            cls = ' class="num"' if i in num else ""
            cells.append(f"<td{cls}>{c if isinstance(c, _Raw) else _e(c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    if n == 0:
        out.append(f'<tr><td colspan="{len(head)}">none</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _code(text: Any) -> _Raw:
    return _Raw(f"<code>{_e(text)}</code>")


def _tag(level: str) -> str:
    return f'<span class="tag {_e(level)}">{_e(level)}</span>'


def _listed_rows(items: Sequence[Listed]) -> list[list[Any]]:
    return [
        [m.time[:19].replace("T", " "), m.event, m.identity, m.pod, m.node, m.object, m.reason,
         _code(f"{m.log} seq {m.seq}")]
        for m in items
    ]  # fmt: skip


_LISTED_HEAD = ("time (UTC)", "event", "identity", "pod", "node", "object", "reason", "where")


def _gap_text(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"


def render_html(ev: Evidence) -> str:
    p, pr, acc = ev.provenance, ev.protection, ev.access
    o: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>weightguard evidence: {_e(ev.release)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>Evidence report: <code>{_e(ev.release)}</code></h1>",
        f'<p class="meta">generated {_e(ev.generated_at)} by {_e(ev.generator)}; every '
        "verdict below was computed by verification at that time under the policy shown, "
        "not copied from the release's own claims. Evidence, not legal advice.</p>",
        f'<section class="verdict {_e(ev.verdict)}" id="verdict">',
        f"<h2>{_tag(ev.verdict)}Verdict</h2><ul>",
    ]
    for area, level, words in ev.headline:
        o.append(f"<li>{_tag(level)}<b>{_e(area)}:</b> {_e(words)}</li>")
    o.append("</ul>")
    if ev.answers:
        o.append('<table class="answers">')
        o += [f"<tr><th>{_e(q)}</th><td>{_e(a)}</td></tr>" for q, a in ev.answers]
        o.append("</table>")
    o.append("</section>")

    # ------------------------------------------------------------ provenance
    o.append('<section id="provenance"><h2>Provenance</h2>')
    o.append(f"<p>{_tag(p.verdict)}{_e(p.summary)}</p>")
    o.append(
        _table(
            ("", ""),
            [
                ("policy (the caller's trust)", _code(p.policy)),
                ("signature bundle", _code(p.signature)),
                ("bundle SHA-256", _code(p.bundle_sha256 or "-")),
                ("bundle kind", p.kind or "-"),
                ("signer (proven)", p.signer or "-"),
                ("signing time", f"{p.signed_at or 'unknown'} ({p.time_source or 'no source'})"),
                ("model name (signed)", p.model_name or "-"),
                ("base model", f"{p.base_model[0]} (declared in {p.base_model[1]})"
                 if p.base_model else "none declared"),
            ],
        )
    )  # fmt: skip
    if p.unsafe:
        o.append('<p class="bad">The signer was NOT verified (--unsafe-no-verification).</p>')
    for i, proof in enumerate(p.proofs, 1):
        o.append(f"<h3>Signer {i}: {_e(proof.signer)}</h3>")
        rows: list[tuple[str, Any]] = [
            ("trust anchor", proof.anchor),
            ("key fingerprint (SHA-256 of the public key)", _code(proof.key_fingerprint or "-")),
        ]
        if proof.signed_at:
            rows.append(("signed at", f"{proof.signed_at} ({proof.time_source})"))
        o.append(_table(("", ""), rows))
        if proof.chain:
            o.append(
                _table(
                    ("certificate (leaf first)", "issuer", "valid from", "valid to", "SHA-256"),
                    [(c.subject, c.issuer, c.not_before, c.not_after, _code(c.sha256))
                     for c in proof.chain],
                )
            )  # fmt: skip
        if proof.tlog:
            o.append(
                _table(
                    ("transparency log", "log index", "integrated time", "log id"),
                    [(t.get("kind", "rekor"), t.get("log_index"), t.get("integrated_time"),
                      _code(t.get("log_id"))) for t in proof.tlog],
                    num=(1,),
                )
            )  # fmt: skip
    if p.files:
        o.append(f"<h3>Covered files ({len(p.files)}), as verified</h3>")
        o.append(
            _table(
                ("file", "bytes", "digest", "chunk digests", "encrypted"),
                [(f.name, f"{f.size:,}", _code(f"{f.digest_algorithm}:{f.digest}"),
                  f"{f.chunks} x {f.chunk_algorithm}", "yes" if f.encrypted else "no")
                 for f in p.files],
                num=(1,),
            )
        )  # fmt: skip
    o.append("<h3>Not covered by the signature</h3>")
    o.append(_table(("file", "why"), p.uncovered))
    o.append("</section>")

    # ------------------------------------------------------------ protection
    o.append('<section id="protection"><h2>Protection</h2>')
    if pr.error:
        o.append(f'<p class="bad">{_e(pr.error)}</p>')
    if pr.encrypted:
        o.append(
            _table(
                ("artifact", "algorithm", "key provider", "key reference", "version",
                 "context", "header encrypted", "chunk"),
                [(a.name, a.aead, a.provider, _code(a.key_uri), a.key_version, _code(a.context),
                  "yes" if a.header_encrypted else "no (tensor names visible)",
                  f"{a.chunk_size:,} B") for a in pr.encrypted],
            )
        )  # fmt: skip
        o.append(
            '<p class="meta">Key references and providers only: the data keys are wrapped '
            "by the provider and never leave it in the clear; none was used to make this "
            "report.</p>"
        )
    if pr.plain_weights:
        o.append(
            '<p class="bad">Weight files NOT encrypted at rest: '
            + ", ".join(f"<code>{_e(n)}</code>" for n in pr.plain_weights)
            + "</p>"
        )
    o.append("<h3>Key rotation (rewrap events in the verified logs)</h3>")
    st = acc.stats
    if st is None:
        o.append("<p>No verified audit log: rotation history unknown.</p>")
    else:
        o.append(
            _table(_LISTED_HEAD, _listed_rows(st.rotations))
            + _more(st.rotations_total, len(st.rotations))
        )
    o.append("<h3>Watermark</h3>")
    wm = pr.watermark
    if wm is None:
        o.append(f"<p>{_e(pr.watermark_note or 'no watermark commitment found')}</p>")
    else:
        o.append(
            _table(
                ("", ""),
                [
                    ("commitment file", _code(wm.path)),
                    ("scheme", wm.scheme),
                    ("embedded at", wm.time),
                    ("key reference", _code(wm.key_ref)),
                    ("key commitment", _code(wm.commitment)),
                    ("tensors marked", wm.tensors_marked),
                    ("marked outputs vs verified files", wm.outputs_match),
                    ("key check", wm.key_check or "no --watermark-key given (not checked)"),
                ],
            )
        )
    o.append("</section>")

    # ------------------------------------------------------------ access
    o.append('<section id="access"><h2>Access</h2>')
    if not acc.logs:
        o.append("<p>No audit log given (<code>--access-log</code>).</p>")
    o.append(
        _table(
            ("log", "verdict", "what verification found"),
            [(_code(lv.source), _Raw(_tag(lv.verdict)), lv.text) for lv in acc.logs],
        )
    )
    for lv in acc.logs:
        for w in lv.warnings:
            o.append(f'<p class="warn">{_e(lv.source)}: {_e(w)}</p>')
        if not lv.summarised and lv.verdict != "DUPLICATE":
            o.append(
                f'<p class="bad">{_e(lv.source)} is {_e(lv.verdict)}: its events are NOT '
                "summarised below (a log that does not verify proves nothing about who "
                "accessed what).</p>"
            )
    if acc.verdict == "UNSIGNED" and st is not None:
        o.append(
            '<p class="warn">UNSIGNED: the chain is intact but no checkpoint key was given, '
            "so the figures below only show a self-consistent file, which whoever can write "
            "it could have recomputed. Pass <code>--checkpoint-key</code>.</p>"
        )
    if st is not None:
        span = (
            f"{st.first:%Y-%m-%d %H:%M} to {st.last:%Y-%m-%d %H:%M} UTC"
            if st.first and st.last
            else "no timed events"
        )
        o.append(
            f"<p>{st.events:,} events, {st.loads:,} successful loads, "
            f"<b>{st.denied_total:,} denied</b>, <b>{st.tamper_total:,} tamper</b>, "
            f"from {len(set(st.loads_by_identity) | set(st.denied_by_identity)):,} "
            f"identities; {_e(span)}.</p>"
        )
        if acc.timeline_svg:
            o.append(
                "<h3>Timeline: loads per identity, denials and tamper events marked</h3>"
                f'<div class="plot" id="timeline">{acc.timeline_svg}</div>'
            )
        for by in ("pod", "node"):
            svg = getattr(acc, f"timeline_{by}_svg")
            if svg:
                o.append(f'<h3>Loads per {by}</h3><div class="plot" id="timeline-{by}">{svg}</div>')
        o.append("<h3>Totals per identity</h3>")
        idents = sorted(
            set(st.loads_by_identity) | set(st.denied_by_identity),
            key=lambda i: (-st.loads_by_identity[i], i),
        )
        o.append(
            _table(
                ("identity", "loads", "denied"),
                [(i, f"{st.loads_by_identity[i]:,}", f"{st.denied_by_identity[i]:,}")
                 for i in idents],
                num=(1, 2),
            )
        )  # fmt: skip
        o.append('<div style="display:flex;gap:16px"><div style="flex:1">')
        o.append(
            _table(
                ("pod", "loads"),
                [(k, f"{v:,}") for k, v in st.loads_by_pod.most_common(20)],
                num=(1,),
            )
        )
        o.append('</div><div style="flex:1">')
        o.append(
            _table(
                ("node", "loads"),
                [(k, f"{v:,}") for k, v in st.loads_by_node.most_common(20)],
                num=(1,),
            )
        )
        o.append("</div></div>")  # fmt: skip
        o.append(f"<h3>Denials ({st.denied_total:,})</h3>")
        o.append(
            _table(_LISTED_HEAD, _listed_rows(st.denied)) + _more(st.denied_total, len(st.denied))
        )
        o.append(f"<h3>Tamper events ({st.tamper_total:,})</h3>")
        o.append(
            _table(_LISTED_HEAD, _listed_rows(st.tamper)) + _more(st.tamper_total, len(st.tamper))
        )
        o.append("<h3>Gaps and checkpoint coverage</h3>")
        o.append(
            _table(
                ("largest silence", "from", "to"),
                [(_gap_text(s), a, b) for s, a, b in st.largest_gaps()],
            )
        )
        cov = [
            (lv.source, s["log_id"], f"{s['records']:,}",
             f"{s['checkpoints_verified']}/{s['checkpoints']}",
             f"{s['signed_through']:,}", s["unsigned_tail"],
             "-" if s["anchored_size"] is None else f"{s['anchored_size']:,}")
            for lv in acc.logs if lv.summarised for s in lv.summaries
        ]  # fmt: skip
        o.append(
            _table(
                ("source", "log id", "records", "checkpoints verified", "signed through",
                 "unsigned tail", "anchored size"),
                cov,
                num=(2, 4, 5, 6),
            )
        )  # fmt: skip
    o.append("</section>")

    # ------------------------------------------------------------ commands
    o.append('<section id="reproduce"><h2>Reproduce each check</h2>')
    o.append(_table(("check", "command"), [(w, _code(c)) for w, c in ev.commands]))
    o.append("</section></main></body></html>")
    return "\n".join(o) + "\n"


def _more(total: int, shown: int) -> str:
    if total > shown:
        return f'<p class="meta">first {shown} of {total:,} shown; all with the command below.</p>'
    return ""


# ---------------------------------------------------------------------------- Markdown


# Line breaks of every kind (CommonMark ends a line at \r too; a value must not start a
# heading, list item or table row of its own).
_MD_BREAKS = re.compile(r"[\r\n\x0b\x0c\x85\u2028\u2029]")
# Markdown syntax a value could use to leave its cell or text: code spans, links and
# images, table cells, backslash escapes; HTML specials become entities (Markdown
# renders raw HTML, so a file name or identity such as <img onerror=...> must not).
_MD_SPECIAL = {"\\": "\\\\", "`": "\\`", "|": "\\|", "[": "\\[", "]": "\\]",
               "*": "\\*", "_": "\\_", "&": "&amp;", "<": "&lt;", ">": "&gt;"}  # fmt: skip


def _m(value: Any) -> str:
    """A value as Markdown text: shown as written, never markup."""
    text = _MD_BREAKS.sub(" ", "" if value is None else str(value))
    return "".join(_MD_SPECIAL.get(c, c) for c in text)


def _mcode(value: Any) -> str:
    """A value as a Markdown code span (literal: no HTML, no emphasis), its fence longer
    than any run of backticks inside it."""
    text = _MD_BREAKS.sub(" ", "" if value is None else str(value))
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _mtable(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(_m(h) for h in head) + " |", "|" + "---|" * len(head)]
    n = 0
    for r in rows:
        n += 1
        out.append("| " + " | ".join(_m(c) for c in r) + " |")
    if n == 0:
        out.append("| none |" + " |" * (len(head) - 1))
    return [*out, ""]


def render_markdown(ev: Evidence) -> str:
    p, pr, acc = ev.provenance, ev.protection, ev.access
    o = [
        f"# Evidence report: {_mcode(ev.release)}",
        "",
        f"Generated {_m(ev.generated_at)} by {_m(ev.generator)}; every verdict was computed by "
        "verification under the policy shown. Evidence, not legal advice.",
        "",
        f"## Verdict: **{_m(ev.verdict)}**",
        "",
    ]
    o += [f"- **{_m(area)}: {_m(level)}** - {_m(words)}" for area, level, words in ev.headline]
    o += ["", *_mtable(("question", "answer"), ev.answers)] if ev.answers else []
    o += ["", "## Provenance", "", f"**{_m(p.verdict)}**: {_m(p.summary)}", ""]
    o += _mtable(
        ("", ""),
        [
            ("policy", p.policy),
            ("signature bundle", p.signature),
            ("bundle SHA-256", p.bundle_sha256 or "-"),
            ("signer (proven)", p.signer or "-"),
            ("signing time", f"{p.signed_at or 'unknown'} ({p.time_source or 'no source'})"),
            ("base model", f"{p.base_model[0]} ({p.base_model[1]})" if p.base_model else "none"),
        ],
    )
    for i, proof in enumerate(p.proofs, 1):
        o += [f"### Signer {i}: {_m(proof.signer)}", ""]
        o += _mtable(
            ("", ""), [("trust anchor", proof.anchor), ("key fingerprint", proof.key_fingerprint)]
        )
        if proof.chain:
            o += _mtable(
                ("certificate", "issuer", "valid from", "valid to"),
                [(c.subject, c.issuer, c.not_before, c.not_after) for c in proof.chain],
            )
        if proof.tlog:
            o += _mtable(
                ("log index", "integrated time", "log id"),
                [(t.get("log_index"), t.get("integrated_time"), t.get("log_id"))
                 for t in proof.tlog],
            )  # fmt: skip
    if p.files:
        o += [f"### Covered files ({len(p.files)})", ""]
        o += _mtable(
            ("file", "bytes", "digest", "encrypted"),
            [(f.name, f.size, f"{f.digest_algorithm}:{f.digest}", "yes" if f.encrypted else "no")
             for f in p.files],
        )  # fmt: skip
    o += ["### Not covered by the signature", ""]
    o += _mtable(("file", "why"), p.uncovered)
    o += ["## Protection", ""]
    if pr.error:
        o += [f"**{_m(pr.error)}**", ""]
    o += _mtable(
        ("artifact", "algorithm", "provider", "key reference", "version", "header encrypted"),
        [(a.name, a.aead, a.provider, a.key_uri, a.key_version, a.header_encrypted)
         for a in pr.encrypted],
    )  # fmt: skip
    if pr.plain_weights:
        o += ["**Not encrypted at rest:** " + ", ".join(_mcode(n) for n in pr.plain_weights), ""]
    wm = pr.watermark
    if wm is None:
        o += [f"Watermark: {_m(pr.watermark_note or 'no commitment found')}", ""]
    else:
        o += [
            f"Watermark: {_m(wm.scheme)}, commitment {_mcode(wm.commitment)} ({_m(wm.time)}); "
            f"{_m(wm.outputs_match)}; key check: {_m(wm.key_check or 'not checked')}",
            "",
        ]
    o += ["## Access", ""]
    o += _mtable(("log", "verdict", "finding"), [(lv.source, lv.verdict, lv.text)
                                                  for lv in acc.logs])  # fmt: skip
    st = acc.stats
    if st is not None:
        if acc.verdict == "UNSIGNED":
            o += ["**UNSIGNED**: chain intact, no checkpoint key given; self-consistent only.", ""]
        o += [
            f"{st.events:,} events, {st.loads:,} loads, **{st.denied_total:,} denied**, "
            f"**{st.tamper_total:,} tamper**.",
            "",
            "### Loads per identity",
            "",
        ]
        o += _mtable(
            ("identity", "loads", "denied"),
            [(i, st.loads_by_identity[i], st.denied_by_identity[i])
             for i in sorted(set(st.loads_by_identity) | set(st.denied_by_identity))],
        )  # fmt: skip
        tl = st.timeline(max_bins=60)
        if tl.start is not None:
            o += [f"### Loads per {tl.bin_hours} h (timeline)", ""]
            rows = []
            for b in range(tl.bins):
                n = sum(s.get(b, 0) for s in tl.series.values())
                if n:
                    rows.append((f"{tl.bin_start(b):%Y-%m-%d %H:%M}", n))
            o += _mtable(("from (UTC)", "loads"), rows)
        o += [f"### Denials ({st.denied_total:,})", ""]
        o += _mtable(
            _LISTED_HEAD,
            [
                [*r[:-1], f"{m.log} seq {m.seq}"]
                for r, m in zip(_listed_rows(st.denied), st.denied, strict=True)
            ],
        )
        o += [f"### Tamper events ({st.tamper_total:,})", ""]
        o += _mtable(
            _LISTED_HEAD,
            [
                [*r[:-1], f"{m.log} seq {m.seq}"]
                for r, m in zip(_listed_rows(st.tamper), st.tamper, strict=True)
            ],
        )
    o += ["## Reproduce each check", ""]
    o += [f"- {_m(w)}: {_mcode(c)}" for w, c in ev.commands]
    return "\n".join(o) + "\n"


__all__ = ["ATTENTION", "FAIL", "PASS", "render_html", "render_markdown"]
