"""Render benchmark results as markdown into ``benchmarks/README.md``.

    python -m benchmarks.report                 # newest result of each mode
    python -m benchmarks.report FILE.json ...   # these result files
    python -m benchmarks.report --stdout        # print instead of rewriting README

The table goes between the ``<!-- results:begin -->`` and ``<!-- results:end -->``
markers; the rest of the README is left alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, ROOT

README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
MODE_ORDER = ("quick", "goals", "loads", "full", "gpu")


def latest_results() -> list[Path]:
    out = []
    for mode in MODE_ORDER:
        files = sorted(RESULTS.glob(f"{mode}-*.json"))
        if files:
            out.append(files[-1])
    return out


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _verdict(v: str) -> str:
    return {"pass": "**pass**", "miss": "**MISS**"}.get(v, v)


# The sources each case group's figures depend on: a verdict measured at a commit before
# one of them changed is shown as stale (the figure no longer describes the code).
GROUP_SOURCES = {
    "sign": ("weightguard/signing.py", "weightguard/_internal/signing"),
    "verify": (
        "weightguard/signing.py",
        "weightguard/verifying.py",
        "weightguard/_internal/signing",
    ),
    "encrypt": (
        "weightguard/crypt.py",
        "weightguard/_internal/crypt",
        "weightguard/_internal/format",
    ),
    "load": ("weightguard/loader.py", "weightguard/_internal/load", "weightguard/_internal/format"),
}


def stale_since(commit: str, case: str) -> str:
    """Why a figure of ``case`` measured at ``commit`` no longer describes the code
    (``""``: still current): commits since to the sources of the case's group."""
    group = next((g for g in GROUP_SOURCES if case.startswith(g)), None)
    if group is None or not commit:
        return ""
    try:
        p = subprocess.run(
            ["git", "rev-list", "--count", f"{commit}..HEAD", "--", *GROUP_SOURCES[group]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if p.returncode != 0:
        return f"commit {commit[:10]} is not in this repository"
    n = int(p.stdout.strip() or 0)
    return f"{n} later commits to the {group} path" if n else ""


def _goal_row(g: dict[str, Any], where: str, case: str, commit: str) -> str:
    verdict = _verdict(g["verdict"])
    if g["verdict"] == "n/a" and g.get("why"):
        verdict = "n/a (not measured in this run: the variant failed or did not run)"
    stale = stale_since(commit, case) if g["verdict"] in ("pass", "miss") else ""
    if stale:
        verdict = f"{verdict}, stale ({stale}: re-measure)"
    return f"| {g['goal']} | {where} | {_goal_value(g)} | {verdict} |"


def _goal_value(g: dict[str, Any]) -> str:
    if "ratio" in g:
        return f"{g['ratio']:.2f}x"
    if "value_s" in g:
        return _fmt_s(g["value_s"])
    if "value_mib" in g:
        return f"{g['value_mib']:.0f} MiB"
    return g.get("why", "-")[:80]


def render_run(res: dict[str, Any], path: Path) -> str:
    meta = res["meta"]
    m = meta["machine"]
    v = meta["versions"]
    lines = [
        f"### {meta['mode']} run, {meta['started']}",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('sched_affinity')} usable cores, "
        f"{m.get('mem_total_gib')} GiB RAM"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + (f", flags {' '.join(m['cpu_flags'])}" if m.get("cpu_flags") else "")
        + (f", kernel {m['kernel']}" if m.get("kernel") else "")
        + (
            f", load average {' / '.join(f'{x:.2f}' for x in m['loadavg'])} at the start"
            if m.get("loadavg")
            else ""
        )
        + f"; Python {m.get('python')}. Commit `{meta['git'].get('commit', '')[:10]}`"
        + (" (+ uncommitted changes)" if meta["git"].get("dirty") else "")
        + f". Raw data: [`{path.relative_to(ROOT / 'benchmarks')}`]"
        f"({path.relative_to(ROOT / 'benchmarks')}).",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "Trials: each in a fresh Python process"
        + (
            ", under `chrt -f 1` (SCHED_FIFO)"
            if m.get("trials_under_chrt_f1")
            else ", not under `chrt -f 1` (not permitted or turned off: timings share the cores)"
        )
        + "; imports and setup timed apart from the call (`setup` column).",
        "",
    ]
    micro = res.get("micro") or {}
    figures = [(k, val) for k, val in micro.items() if isinstance(val, float)]
    if figures:
        lines += [
            "Per-core ceilings measured in the same run (`python -m benchmarks.micro`, GB/s, "
            "one thread): " + ", ".join(f"{k} {val:.2f}" for k, val in figures) + ".",
            "",
        ]
    goals: list[tuple[str, dict[str, Any]]] = []
    for case in res["cases"]:
        for cache, block in case.get("caches", {}).items():
            for g in block.get("goals", []):
                goals.append((f"{case['name']} ({cache})", g))
    commit = meta["git"].get("commit", "")
    if goals:
        lines += ["| goal | case | figure | verdict |", "| --- | --- | --- | --- |"]
        for where, g in goals:
            lines.append(_goal_row(g, where, where, commit))
        lines.append("")
    lines += ratio_matrix(res)
    lines += [
        "Per case: median wall time of the timed call, spread min-max over the repetitions,",
        "throughput, CPU-seconds (user+sys, children included) per GB, peak RSS of the",
        "trial process (interpreter + imports included; base = RSS before the call), and",
        "`x wg` = anchor time / weightguard time (> 1: weightguard is faster).",
        "",
    ]
    wn = res.get("watermark_null")
    if wn:
        lines += [
            "#### watermark null distribution (`benchmarks/watermark_null.py`)",
            "",
            f"exit status {wn['returncode']} after {wn['seconds']:.0f} s; last lines:",
            "",
            "```",
            *wn["output_tail"].strip().splitlines()[-15:],
            "```",
            "",
        ]
    for case in res["cases"]:
        lines.append(f"#### {case['title']}  (`{case['name']}`)")
        lines.append("")
        if case.get("error"):
            lines += [f"case failed: `{case['error'][:300]}`", ""]
            continue
        if case.get("notes"):
            lines += [case["notes"], ""]
        if case.get("loadavg"):
            la = case["loadavg"]
            lines += [f"Machine load average (1 min) before/after: {la[0]:.1f} / {la[1]:.1f}.", ""]
        if case.get("load_warning"):
            lines += [f"**Warning**: {case['load_warning']}.", ""]
        for cache, block in case["caches"].items():
            lines += [
                f"{cache} page cache, {case['reps']} repetitions:",
                "",
                "| variant | median | min-max | GB/s | CPU-s/GB | peak RSS MiB (base) | setup "
                "| x wg |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            ratios = block.get("ratios_vs_weightguard", {})
            for var in block["variants"]:
                s = var["summary"]
                label = var["label"]
                if var["side"].startswith("weightguard"):
                    label = f"**{label}**"
                if s.get("status") != "ok":
                    reason = s.get("reason", s.get("status", ""))[:120].replace("|", "/")
                    lines.append(f"| {label} | {s.get('status')}: {reason} | | | | | | |")
                    continue
                gbps = s.get("gbps") if case.get("data_bytes") else None
                cpg = s.get("cpu_s_per_gb") if case.get("data_bytes") else None
                rss = s["peak_rss_mib"]
                if var.get("cli") and s.get("child_peak_rss_mib"):
                    rss = max(rss, s["child_peak_rss_mib"])
                ratio = ratios.get(var["label"])
                lines.append(
                    f"| {label} | {_fmt_s(s['wall_median_s'])} | "
                    f"{_fmt_s(s['wall_min_s'])}-{_fmt_s(s['wall_max_s'])} | {_fmt(gbps)} | "
                    f"{_fmt(cpg)} | {rss:.0f} ({s['base_rss_mib']:.0f}) | "
                    f"{_fmt_s(s.get('setup_median_s'))} | "
                    f"{'' if ratio is None else f'{ratio:.2f}'} |"
                )
            lines.append("")
    return "\n".join(lines)


def ratio_matrix(res: dict[str, Any]) -> list[str]:
    """The issue's table: per load case and weightguard variant, anchor time / weightguard
    time for every anchor (> 1: weightguard is faster), warm page cache."""
    rows: list[str] = []
    anchors: list[str] = []
    for case in res["cases"]:
        if not case.get("group", "").startswith("load"):
            continue
        block = case.get("caches", {}).get("warm", {})
        for a in block.get("variants", []):
            if a["side"] == "anchor" and a["label"] not in anchors:
                anchors.append(a["label"])
    if not anchors:
        return []
    for case in res["cases"]:
        if not case.get("group", "").startswith("load"):
            continue
        block = case.get("caches", {}).get("warm", {})
        for wg, by in block.get("ratios_by_weightguard", {}).items():
            cells = [f"{by[a]:.2f}" if a in by else "-" for a in anchors]
            rows.append(
                f"| {case['name'].removeprefix('load-')} | {wg} | " + " | ".join(cells) + " |"
            )
    if not rows:
        return []
    return [
        "Ratios, warm page cache (anchor median / weightguard median; > 1: weightguard faster):",
        "",
        "| case | weightguard variant | " + " | ".join(anchors) + " |",
        "| --- | --- | " + " | ".join("---" for _ in anchors) + " |",
        *rows,
        "",
    ]


def render(paths: list[Path]) -> str:
    if not paths:
        return "No results yet: run `make bench`."
    parts = []
    for p in paths:
        parts.append(render_run(json.loads(p.read_text()), p))
    return "\n\n".join(parts)


PERFORMANCE = ROOT / "docs" / "performance.md"
LOADS_BEGIN, LOADS_END = "<!-- loads:begin -->", "<!-- loads:end -->"


def render_loads_summary(res: dict[str, Any], path: Path) -> str:
    """The newest ``--loads`` run as docs/performance.md shows it: ratio table + goals."""
    meta, m = res["meta"], res["meta"]["machine"]
    rt = "under `chrt -f 1`" if m.get("trials_under_chrt_f1") else "not under `chrt -f 1`"
    lines = [
        f"`make bench-loads` run of {meta['started']}, commit "
        f"`{meta['git'].get('commit', '')[:10]}`, {m.get('cpu_model')}, "
        f"{m.get('sched_affinity')} cores, trials {rt}; raw data "
        f"[`benchmarks/{path.relative_to(ROOT / 'benchmarks')}`]"
        f"(../benchmarks/{path.relative_to(ROOT / 'benchmarks')}).",
        "",
        *ratio_matrix(res),
    ]
    per_core = (res.get("micro") or {}).get("per_core_s_per_gb") or {}
    stages = [
        ("page-cache read", "page_cache_read"),
        ("BLAKE3", "blake3"),
        ("AES-256-GCM decrypt_into", "aes256gcm_decrypt_into"),
        ("first touch (MADV_POPULATE_WRITE)", "populate_write"),
    ]
    if all(key in per_core for _, key in stages):
        total = sum(per_core[key] for _, key in stages)
        lines += [
            "Per core, same run (`benchmarks.micro`, thread-seconds per GB): "
            + ", ".join(f"{name} {per_core[key]:.2f}" for name, key in stages)
            + f"; total {total:.2f}, i.e. {total / 16:.3f} s/GB on 16 workers.",
            "",
        ]
    suites = (res.get("micro") or {}).get("suites") or {}
    if "blake3+aes256gcm" in suites:
        lines += [
            "Cipher suites, same run (`benchmarks.micro --suites`, s/GB, one thread, min): "
            + ", ".join(
                f"{k} {suites[k]['min']:.3f}"
                for k in ("aes256gcm", "aes256ctr", "blake3+aes256gcm", "blake3+aes256ctr")
            )
            + f"; v2/v1 signed {suites['v2_over_v1_signed_min']:.2f}, "
            f"unsigned {suites['v2_over_v1_unsigned_min']:.2f}.",
            "",
        ]
    goals = [
        (case["name"], g)
        for case in res["cases"]
        for block in case.get("caches", {}).values()
        for g in block.get("goals", [])
    ]
    commit = meta["git"].get("commit", "")
    if goals:
        lines += ["| goal | case | figure | verdict |", "| --- | --- | --- | --- |"]
        lines += [_goal_row(g, n, n, commit) for n, g in goals]
    return "\n".join(lines)


def write_between(doc: Path, begin: str, end: str, body: str) -> bool:
    if not doc.exists():
        return False
    text = doc.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
    return True


def write_readme(body: str) -> None:
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")


SIGNVERIFY_BEGIN, SIGNVERIFY_END = "<!-- signverify:begin -->", "<!-- signverify:end -->"
IMPORTS_BEGIN, IMPORTS_END = "<!-- imports:begin -->", "<!-- imports:end -->"


def _machine_line(m: dict[str, Any]) -> str:
    la = m.get("loadavg") or []
    return (
        f"{m.get('cpu_model')} ({' '.join(m.get('cpu_flags') or []) or 'flags not recorded'}), "
        f"{m.get('cores', m.get('sched_affinity'))} usable cores, kernel {m.get('kernel', '?')}, "
        f"load average {' / '.join(f'{x:.2f}' for x in la) or '?'} at the start"
        + (" (**busy: more runnable threads than cores**)" if m.get("warning") else "")
    )


def _raw(path: Path) -> str:
    rel = path.relative_to(ROOT / "benchmarks")
    return f"[`benchmarks/{rel}`](../benchmarks/{rel})"


def render_signverify(res: dict[str, Any], path: Path) -> str:
    """``benchmarks.signverify``'s newest run as docs/performance.md shows it."""
    lines = [
        f"`python -m benchmarks.signverify --reps {res['reps']}"
        + (f" --before {res['before']}" if res.get("before") else "")
        + f"`{' under `chrt -f 1`' if res.get('sched_fifo') else ''}: "
        + f"{_machine_line(res['machine'])}; raw data {_raw(path)}. Ratio = "
        "model_signing median / weightguard median (> 1: weightguard faster), wall and CPU "
        "time (user + system, every thread), same process, variants alternating.",
        "",
        "| model | weightguard | median | CPU | x model_signing (wall) | x model_signing (CPU) "
        "| load average |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in res["models"].items():
        la = m["loadavg_before_after"]
        for k, r in m["ratio_model_signing_over_weightguard"].items():
            med = m["median"][k]
            lines.append(
                f"| {name} | {k.removeprefix('weightguard ')} | {_fmt_s(med['wall_s'])} | "
                f"{_fmt_s(med['cpu_s'])} | {r['wall']:.2f} | {r['cpu']:.2f} | "
                f"{la[0]:.1f} -> {la[1]:.1f} |"
            )
    costs = [
        (n, m["hash_cpu_s_per_gb"]) for n, m in res["models"].items() if "hash_cpu_s_per_gb" in m
    ]
    if costs:  # each hash's cost on one thread, measured in the same run
        per = "; ".join(
            f"{n}: " + ", ".join(f"{k} {v:.2f}" for k, v in c.items()) + _ceilings(c)
            for n, c in costs
        )
        lines += ["", f"CPU seconds per GB on one thread, same run: {per}."]
    return "\n".join(lines)


def _ceilings(c: dict[str, float]) -> str:
    """The CPU-time ratio to model_signing (SHA-256 + its read copies) that two hashes
    (sign: SHA-256 + BLAKE3) or one (verify: SHA-256) allow when every core is busy."""
    sha, b3 = c.get("sha256"), c.get("blake3 (4 MiB chunks)")
    copy = c.get("1 MiB read copies (model_signing)")
    if not (sha and b3 and copy is not None):
        return ""
    return (
        f" (CPU ratio ceiling with every core busy: sign (sha256 + copies) / (sha256 + "
        f"blake3) = {(sha + copy) / (sha + b3):.2f}, verify (sha256 + copies) / sha256 = "
        f"{(sha + copy) / sha:.2f})"
    )


def render_imports(res: dict[str, Any], path: Path) -> str:
    """``benchmarks.imports``' newest run as docs/performance.md shows it."""
    top = list(res["importtime_top_ms"].items())[:8]
    return "\n".join(
        [
            f"`python -m benchmarks.imports --reps {res['reps']}`"
            + (" under `chrt -f 1`" if res.get("sched_fifo") else "")
            + f" ({res['model']}, "
            f"{res['tensors']} tensors): {_machine_line(res['machine'])}; raw data "
            f"{_raw(path)}.",
            "",
            "| measured (median of fresh interpreters, alternating) | ms |",
            "| --- | --- |",
            f"| `import torch, safetensors, safetensors.torch` (wall) | "
            f"{res['anchor_imports_ms']:.0f} |",
            "| `from weightguard import load_file` on top (wall) | "
            f"{res['weightguard_loader_import_ms']:.0f} "
            f"(goal <= {res['goal_ms']:.0f}: {_verdict(res['verdict'])}) |",
            "| `from weightguard import load_file` on top (CPU) | "
            f"{res['weightguard_loader_import_cpu_ms']:.0f} "
            f"(goal <= {res['goal_ms']:.0f}: {_verdict(res['verdict_cpu'])}) |",
            *(
                [
                    f"| of which creating {res['dataclasses_created']} `@dataclass` classes "
                    f"(CPU) | {res['dataclasses_cpu_ms']:.0f} |"
                ]
                if "dataclasses_cpu_ms" in res
                else []
            ),
            f"| first `load_file` in the process | {res['first_load_ms']:.0f} |",
            f"| second `load_file` | {res['second_load_ms']:.0f} |",
            "",
            "Largest imports under it (`-X importtime`, cumulative ms, median): "
            + ", ".join(f"{n.split(' <- ')[-1]} {ms:.1f}" for n, ms in top)
            + ".",
            *(
                [
                    "",
                    "`@dataclass` classes the import creates, by module (classes: CPU ms, "
                    "median): "
                    + ", ".join(
                        f"{m} {n:.0f}: {ms:.1f}"
                        for m, (n, ms) in list(res["dataclasses_by_module"].items())[:10]
                    )
                    + ".",
                ]
                if res.get("dataclasses_by_module")
                else []
            ),
            *(
                [
                    "",
                    "Imported by the first `load_file` (not by the import): "
                    + (", ".join(f"`{m}`" for m in res["first_load_imports"]) or "nothing")
                    + ".",
                ]
                if "first_load_imports" in res
                else []
            ),
        ]
    )


def write_performance(paths: list[Path] | None = None) -> list[str]:
    """Rewrite docs/performance.md's generated blocks from the newest result of each
    kind (or those among ``paths``); returns what was written."""
    done = []
    kinds = (
        ("loads", LOADS_BEGIN, LOADS_END, render_loads_summary),
        ("signverify", SIGNVERIFY_BEGIN, SIGNVERIFY_END, render_signverify),
        ("imports", IMPORTS_BEGIN, IMPORTS_END, render_imports),
    )
    for kind, begin, end, fn in kinds:
        named = [p for p in (paths or []) if p.name.startswith(f"{kind}-")]
        files = named or sorted(RESULTS.glob(f"{kind}-*.json"))
        if not files:
            continue
        chosen = files[-1:]
        if kind == "signverify" and not named:
            # the newest run of each model set (256 MiB, 1 GiB, ...), smallest first
            newest: dict[tuple[str, ...], Path] = {}
            for f in files:
                newest[tuple(sorted(json.loads(f.read_text())["models"]))] = f
            chosen = [newest[k] for k in sorted(newest, key=lambda k: (len(k[0]), k))]
        body = "\n\n".join(fn(json.loads(f.read_text()), f) for f in chosen)
        if write_between(PERFORMANCE, begin, end, body):
            done.append(f"{kind} ({', '.join(f.name for f in chosen)})")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="render benchmark results")
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--stdout", action="store_true")
    args = ap.parse_args(argv)
    paths = [p.resolve() for p in args.files] or latest_results()
    # benchmarks.run's results go to the README; the others (signverify, imports) only to
    # their blocks of docs/performance.md
    runs = [p for p in paths if p.name.split("-")[0] in (*MODE_ORDER, "oms")]
    body = render(runs or latest_results())
    if args.stdout:
        sys.stdout.write(body + "\n")
    else:
        write_readme(body)
        print(f"wrote {README.relative_to(ROOT)} from {len(paths)} result file(s)")
        for what in write_performance(paths):
            print(f"wrote {PERFORMANCE.relative_to(ROOT)}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
