"""`thinkrm delimiters mine`: the first-word frequency table of a corpus, and a lexicon mined from it."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, out_option, progress, user_errors

delimiters_app = typer.Typer(no_args_is_help=True,
                             help="Step delimiter lexicons (which words open a new step).")


@delimiters_app.command("mine")
def mine(
    files: list[Path] = typer.Argument(..., help="Trace files (JSONL or JSON list, as for `analyze`)."),
    out: Path = out_option(help="Where to write the lexicon JSON."),
    top: int = typer.Option(40, "--top", min=1, help="Keep at most this many words."),
    min_segments: int = typer.Option(8, help="Only traces with this many blank-line paragraphs count."),
    min_ratio: float = typer.Option(0.3, min=0.0, max=1.0,
                                    help="Share of a word's occurrences that must open a paragraph."),
    min_trace_share: float = typer.Option(0.02, min=0.0, max=1.0,
                                          help="Share of counted traces a word must open a paragraph in."),
    field: str = typer.Option("", help="Read the text from this field when a row has it (e.g. PRMBench "
                                         "'chosen'); other rows are read as traces."),
    rows: int = typer.Option(30, min=0, help="Rows of the frequency table to print (0: none)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Report and skip malformed rows."),
) -> None:
    """Print the first-word frequency table over FILES and write a delimiter lexicon."""
    from rich.console import Console
    from rich.table import Table

    from ..delimiters import mine_lexicon
    from ..io import InputError, iter_records
    from ..trace import trace_from_record

    def texts():
        for path in files:
            for line, rec in iter_records(path):
                try:
                    if isinstance(rec, InputError):
                        raise rec
                    if field and field in rec:
                        if not isinstance(rec[field], str):
                            raise InputError(f"expected a string, got {type(rec[field]).__name__}", file=path,
                                             line=line, field=field)
                        yield rec[field]
                    else:
                        trace = trace_from_record(rec, default_id=str(line), file=str(path), line=line)
                        yield trace.reasoning
                except InputError as e:
                    if not skip_bad:
                        raise
                    console.print(f"[yellow]skipped:[/] {e}", highlight=False)

    with user_errors():
        source = "mined: " + " + ".join(f"{f.parent.name}/{f.name}" for f in files)
        source += f" (field {field})" if field else ""
        result = mine_lexicon(progress(texts(), "reading traces"), top=top, min_segments=min_segments,
                              min_ratio=min_ratio, min_trace_share=min_trace_share, source=source)
        if result.n_traces == 0:
            raise ValueError(f"no trace has {min_segments} or more blank-line paragraphs; nothing to mine "
                             "(lower --min-segments)")
        table = Table(title=f"first words of {result.n_segments:,} paragraphs in {result.n_traces:,} traces")
        for col, justify in (("word", "left"), ("paragraphs", "right"), ("traces", "right"),
                             ("start ratio", "right"), ("delimiter", "center")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for word, count in result.starts.most_common(rows):
            table.add_row(word, f"{count:,}", f"{result.traces[word]:,}", f"{result.ratio(word):.2f}",
                          "✓" if word in result.lexicon else "")
        if rows > 0:
            Console().print(table)  # the table is the output (stdout); progress and messages go to stderr
        result.lexicon.save(out)
        words = sorted(result.lexicon.words, key=lambda w: -result.starts[w])
        console.print(f"wrote {len(words)} delimiters to {out}: " + ", ".join(words), highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(delimiters_app, name="delimiters")
