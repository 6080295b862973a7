"""The listing verbs: ``compkit competitions``, ``plugins`` and ``submissions`` (Kaggle's leaderboard beside
the local sidecars)."""

from __future__ import annotations

import json
from typing import Any

from compkit import _io, console, registry
from compkit.errors import CompkitError
from compkit.pipeline import _common
from compkit.places import Places


def competition_table() -> list[str]:
    """One aligned line per installed competition: name, task, metric, Kaggle slug, demo, recipes, title."""
    from compkit.competition import Competition

    reg = registry.get()
    reg.manager.warn_failed()
    rows = [("name", "task", "metric", "kaggle", "demo", "recipes", "title")]
    for name in sorted(reg.competitions):
        comp = reg.competitions[name]
        has_demo = type(comp).make_demo is not Competition.make_demo
        rows.append((name, comp.kind.name, comp.metric, comp.kaggle or "-", "yes" if has_demo else "no",
                     ",".join(sorted(comp.recipes())) or "-", comp.title or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]


def plugin_report() -> list[str]:
    """Lines describing each plugin: version, what it registers, and why it failed (if it did)."""
    from compkit import plugins

    lines = []
    try:
        registry.get()
    except CompkitError as error:
        lines.append(f"error: {error}")
    for plugin in plugins.manager().plugins.values():
        head = f"{plugin.name} ({plugin.distribution} {plugin.version})"
        parts = [f"{kind}: {', '.join(names)}" for kind, names in
                 (("competitions", plugin.competitions), ("models", plugin.models),
                  ("losses", plugin.losses), ("optimizers", plugin.optimizers), ("tasks", plugin.tasks), ("commands", plugin.commands))
                 if names]
        if plugin.error:
            lines.append(f"{head}: FAILED: {plugin.error}" + (f" (still loaded: {'; '.join(parts)})" if parts else ""))
            continue
        lines.append(f"{head}: {'; '.join(parts) or 'registers nothing'}")
    return lines


def kaggle_submissions(name: str, where: Places) -> list[dict[str, Any]]:
    """The competition's submissions on Kaggle, newest first, each matched to the local sidecar of the file
    that was uploaded (by the upload's ref, else by file name) so CV and leaderboard stand side by side;
    the scores are saved back into the matched sidecars (``leaderboard``). Prints a table."""
    from compkit import kaggle
    from compkit.runs import read_sidecars

    comp = _common.competition(name)
    if not comp.kaggle:
        raise CompkitError(f"{name} is not a Kaggle competition: it has no leaderboard")
    folder = where.submission_dir(name)
    sidecars = read_sidecars(folder)
    by_ref = {str(s["upload"]["ref"]): s for s in sidecars if isinstance(s.get("upload"), dict) and s["upload"].get("ref")}
    by_file = {f"{s['stamp']}.csv": s for s in sidecars}
    rows = []
    for entry in kaggle.submissions(comp.kaggle):
        local = by_ref.get(str(entry.get("ref"))) or by_file.get(str(entry.get("fileName")))
        rows.append({**entry, "run": local.get("run") if local else None, "cv": local.get("cv_score") if local else None,
                     "stamp": local["stamp"] if local else None})
        if local is not None:
            board = {"ref": entry.get("ref"), "status": entry.get("status"), "public": entry.get("publicScore"),
                     "private": entry.get("privateScore"), "date": entry.get("date")}
            saved = {key: value for key, value in local.items() if key != "stamp"}
            if saved.get("leaderboard") != board:
                _io.write_text(folder / f"{local['stamp']}.json",
                               json.dumps({**saved, "leaderboard": board}, indent=2, default=str) + "\n")
    header = ("date", "file", "status", "public", "private", "run", f"cv {comp.metric}", "description")
    cells = [header] + [(str(row.get("date") or "-")[:16].replace("T", " "), str(row.get("fileName") or "-"),
                         str(row.get("status") or "-"), str(row.get("publicScore") or "-"),
                         str(row.get("privateScore") or "-"), row["run"] or "-",
                         "-" if row["cv"] is None else f"{row['cv']:.5f}", str(row.get("description") or ""))
                        for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header) - 1)]
    for line in cells:
        console.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
    if not rows:
        console.echo(f"no submissions to {comp.kaggle} yet: compkit submit {name} --upload")
    return rows
