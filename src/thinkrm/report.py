"""The HTML report: one self-contained `index.html` to browse traces, their ME² signals and their DAGs.

The page must work offline and from a file (no CDN, no server), so the CSS, the JavaScript and the data are
all inline. It is written as a stream: each trace's details (text, DAG, findings) go into their own
`<script type="application/json">` block as soon as the trace is analysed, and only the small summary rows
are held until the end. The browser parses a trace's details only when it is opened, so a report over
thousands of long traces stays quick to load and the writer's memory stays flat.
"""

from __future__ import annotations

import html
import re
from importlib import resources
from typing import IO, Any

from .io import dumps
from .me2 import DIMENSIONS, SIGNALS, Analysis
from .trace import Trace

# Findings drawn as highlights inside the text; the others (whole steps) become badges on their step.
INLINE_FINDINGS = ("self_corrections", "conflicting_values", "arithmetic_wrong", "unsupported_claims")
MAX_LABEL_FIELDS = 5
SHORT = {"backtracks": "backtracks", "restarts": "restarts", "reopened_branches": "reopened",
         "off_path_share": "off-path", "dead_ends": "dead ends", "path_coherence": "coherence",
         "question_drift": "drift", "unsupported_claims": "unsupp./1k", "words_per_step": "words/step",
         "filler_per_1k": "filler/1k", "near_duplicate_steps": "near-dup", "paraphrase_loops": "paraphr.",
         "reverifications": "re-verif.", "self_corrections": "self-corr.", "conflicting_values": "conflicts",
         "arithmetic_checked": "arith.", "arithmetic_wrong": "arith. wrong"}


def script_json(obj: Any) -> str:
    """JSON safe inside a `<script>` element: `</script>` or `<!--` in a trace cannot end it early."""
    return dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _template() -> tuple[str, str]:
    text = resources.files("thinkrm").joinpath("data/report.html").read_text(encoding="utf-8")
    head, tail = text.split("<!--TRACE_DATA-->")
    return head, tail


class ReportWriter:
    """Streams traces into the report page; call `add` per trace, then `finish` once."""

    def __init__(self, f: IO[str], *, title: str = "thinkrm report", structurer: str = "heuristic"):
        self.f = f
        self.title = title
        self.structurer = structurer
        self.rows: list[dict[str, Any]] = []
        self.label_counts: dict[str, int] = {}
        self.label_values: dict[str, Any] = {}  # first value seen per label field
        self.varying: set[str] = set()  # label fields whose value differs between rows
        self.has_score = False
        self._head, self._tail = _template()
        self.f.write(self._head.replace("__TITLE__", html.escape(title)))

    def add(self, trace: Trace, analysis: Analysis, score: float | None = None) -> None:
        i = len(self.rows)
        dag = analysis.dag
        detail = {"prompt": trace.prompt, "answer": trace.answer, "text": dag.text, "dag": dag.to_dict(),
                  "me2": {d: analysis.signals[d] for d in DIMENSIONS},
                  "findings": [f.to_dict() for f in analysis.findings],
                  "step_words": [len(s.text.split()) for s in dag.steps]}
        self.f.write(f'<script type="application/json" id="t{i}">{script_json(detail)}</script>\n')
        row: dict[str, Any] = {"id": trace.id}
        row.update((k, analysis.size[k]) for k in ("steps", "supernodes", "words"))
        row.update(analysis.flat())
        for k, v in trace.extra.items():
            if k not in row and _is_label(v):
                row[k] = v
                self.label_counts[k] = self.label_counts.get(k, 0) + 1
                self.label_values.setdefault(k, v)
                if self.label_values[k] != v:
                    self.varying.add(k)
        if score is not None:
            row["score"] = score
            self.has_score = True
        self.rows.append(row)

    def columns(self) -> list[dict[str, Any]]:
        """Table columns: id, short label fields that most rows carry (e.g. `correct`), score, size, signals.

        A label with the same value in every row (the model name of a single-model run) only takes space.
        """
        n = max(1, len(self.rows))
        common = [k for k, c in self.label_counts.items() if c >= n / 2 and (k in self.varying or n == 1)]
        labels = sorted(common, key=lambda k: -self.label_counts[k])
        cols: list[dict[str, Any]] = [{"key": "id", "label": "id", "type": "text"}]
        cols += [{"key": k, "label": k, "type": "text"} for k in labels[:MAX_LABEL_FIELDS]]
        if self.has_score:
            cols.append({"key": "score", "label": "score", "better": "higher",
                         "definition": "reward-model score (higher = better)"})
        cols += [{"key": k, "label": k.replace("supernodes", "super-nodes"), "definition": f"number of {k}"}
                 for k in ("steps", "supernodes", "words")]
        cols += [{"key": s.name, "label": SHORT.get(s.name, s.name), "dimension": s.dimension,
                  "definition": f"{s.dimension.replace('_', '-')}: {s.name}: {s.definition}",
                  **({"better": s.better} if s.better != "neither" else {})} for s in SIGNALS.values()]
        return cols

    def finish(self) -> int:
        n = len(self.rows)
        meta = {"columns": self.columns(), "dimensions": list(DIMENSIONS),
                "signals": {s.name: {"definition": s.definition, "better": s.better}
                            for s in SIGNALS.values()},
                "inline_findings": list(INLINE_FINDINGS),
                "summary": f"{n} trace{'s' if n != 1 else ''} · structurer: {self.structurer}"}
        fill = {"__META__": script_json(meta), "__ROWS__": script_json(self.rows)}
        # One pass, so a placeholder-like string inside the data is never substituted again.
        self.f.write(re.sub("__META__|__ROWS__", lambda m: fill[m.group(0)], self._tail))
        return n


def _is_label(v: Any) -> bool:
    return isinstance(v, (bool, int, float)) or (isinstance(v, str) and 0 < len(v) <= 40)
