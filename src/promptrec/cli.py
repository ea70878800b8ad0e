"""The `promptrec` command line: argument parsing and printing; every verb is one library call."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from promptrec.data import DataError

app = typer.Typer(
    help="LLM prompt recovery: recover the rewrite prompt from an original and a rewritten text.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

Embed = Annotated[str, typer.Option("--embedder", "-e", help="official (sentence-t5-base), proxy (packaged MiniLM) or a folder")]


@app.callback()
def _setup(threads: Annotated[int, typer.Option(help="torch threads (0: PROMPTREC_THREADS or all cores)")] = 0) -> None:
    """Set thread counts once for every verb."""
    from promptrec.models import quiet_libraries, set_threads

    quiet_libraries()
    set_threads(threads or None)


def _warn(frame) -> None:
    for line in frame.attrs.get("warnings", []):
        err.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)


def _options(pairs: list[str]) -> dict[str, object]:
    """`key=value` strings to a dict, values parsed as YAML scalars (numbers, booleans, text)."""
    import yaml

    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise DataError(f"--set '{pair}': expected key=value")
        values[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return values


def _build_method(name: str, config: Optional[Path], settings: list[str]):
    from promptrec.methods.base import from_name, load_config_file

    values = load_config_file(config) if config else {}
    values.update(_options(settings))
    return from_name(name, **values)


@app.command()
def clean(
    src: Annotated[Path, typer.Argument(help="table with a rewritten_text column")],
    dst: Annotated[Path, typer.Argument(help="output table (.csv, .parquet, .jsonl)")],
    drop_empty: Annotated[bool, typer.Option(help="drop rows whose rewrite is empty after cleaning")] = False,
) -> None:
    """Clean LLM chatter and refusals out of rewritten texts; print how many rows each rule hit."""
    from promptrec.clean import clean_frame

    report, dropped = clean_frame(src, dst, drop_empty=drop_empty)
    out.print(f"cleaned {report.rows} rows -> {dst}")
    for line in report.lines():
        out.print(f"  {line}")
    out.print(f"  empty after cleaning: {report.empty}" + (f" (dropped {dropped})" if drop_empty else ""))


@app.command()
def embed(
    src: Annotated[Path, typer.Argument(help="table or JSON/txt list of texts")],
    output: Annotated[Path, typer.Option("-o", "--output", help="cache file, .npy (a .json sidecar is written too)")],
    column: Annotated[str, typer.Option(help="column to embed")] = "rewrite_prompt",
    embedder: Embed = "proxy",
) -> None:
    """Embed a column once and cache it as .npy, as the original pipeline did."""
    from promptrec.data import read_texts
    from promptrec.metric import load_embedder, save_embeddings

    texts = read_texts(src, column)
    model = load_embedder(embedder)
    emb = save_embeddings(output, texts, model)
    out.print(f"embedded {len(texts)} texts -> {output} shape {emb.shape} [{model.label}]")


@app.command()
def score(
    pred: Annotated[Path, typer.Argument(help="predictions: id,rewrite_prompt")],
    truth: Annotated[Path, typer.Argument(help="truth: id,rewrite_prompt (other columns ignored)")],
    embedder: Embed = "proxy",
    per_row: Annotated[Optional[Path], typer.Option(help="write per-row scores to this CSV")] = None,
) -> None:
    """Mean sharpened cosine similarity of predicted vs true prompts, labelled with its embedder."""
    from promptrec.metric import load_embedder, score_files

    result = score_files(pred, truth, load_embedder(embedder), per_row)
    out.print(str(result), markup=False)


@app.command()
def recover(
    test: Annotated[Path, typer.Argument(help="pairs: id,original_text,rewritten_text")],
    output: Annotated[Path, typer.Option("-o", "--output", help="submission CSV to write")] = Path("submission.csv"),
    method: Annotated[str, typer.Option(help="method name (see `promptrec methods`)")] = "constant",
    model: Annotated[Optional[Path], typer.Option(help="folder saved by `promptrec train` (overrides --method)")] = None,
    examples: Annotated[Optional[Path], typer.Option(help="triples to fit the method on before recovering")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML/JSON file of method options")] = None,
    setting: Annotated[list[str], typer.Option("--set", help="method option key=value (repeatable)")] = [],
) -> None:
    """Recover one prompt per row and write `id,rewrite_prompt` (never blank, input order)."""
    from promptrec.data import TRIPLE_COLUMNS, read_table
    from promptrec.methods.base import load_method
    from promptrec.recover import recover as run

    chosen = load_method(model) if model else _build_method(method, config, setting)
    if examples:
        triples = read_table(examples, TRIPLE_COLUMNS)
        _warn(triples)
        chosen.fit(triples)
    prompts = run(test, output, chosen)
    out.print(f"wrote {len(prompts)} prompts -> {output} (method {chosen.name})")


@app.command()
def train(
    method: Annotated[str, typer.Argument(help="method name")],
    data: Annotated[Path, typer.Argument(help="triples: id,original_text,rewrite_prompt,rewritten_text")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder to save the trained method")],
    config: Annotated[Optional[Path], typer.Option(help="YAML/JSON file of method options")] = None,
    setting: Annotated[list[str], typer.Option("--set", help="method option key=value (repeatable)")] = [],
) -> None:
    """Fit a method on triples and save it (JSON config + safetensors/npy, never pickle)."""
    from promptrec.data import TRIPLE_COLUMNS, ensure_writable, read_table

    chosen = _build_method(method, config, setting)
    ensure_writable(output / "method.json")
    triples = read_table(data, TRIPLE_COLUMNS)
    _warn(triples)
    chosen.fit(triples)
    chosen.save(output)
    out.print(f"trained {method} on {len(triples)} rows -> {output}")


@app.command()
def methods() -> None:
    """List the registered recovery methods."""
    from promptrec.methods.base import METHODS

    for name in METHODS:
        out.print(name)


@app.command()
def bench(name: Annotated[str, typer.Argument(help="benchmark name (a file in bench/)")]) -> None:
    """Run a benchmark from bench/ and print its side-by-side ratios."""
    import runpy

    folder = Path(__file__).resolve().parents[2] / "bench"
    script = folder / f"{name}.py"
    if not script.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.py"))) or "none found"
        raise DataError(f"unknown benchmark '{name}' (known: {known})")
    runpy.run_path(str(script), run_name="__main__")


@app.command("regressor-report")
def regressor_report(
    model: Annotated[Path, typer.Argument(help="folder saved by `promptrec train regressor`")],
    data: Annotated[Path, typer.Argument(help="held-out triples: id,original_text,rewrite_prompt,rewritten_text")],
) -> None:
    """Score a trained regressor on labelled triples: embedding-space score, decoded score, bank oracle."""
    from promptrec.data import TRIPLE_COLUMNS, read_table
    from promptrec.methods.regressor import RegressorMethod

    triples = read_table(data, TRIPLE_COLUMNS)
    _warn(triples)
    for line in RegressorMethod.load(model).report(triples).lines():
        out.print(line, markup=False, soft_wrap=True)


def main() -> None:
    """Entry point: run the app, turning expected errors into one coloured line and exit code 2."""
    try:
        app()
    except DataError as error:
        err.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
