"""The `promptrec` command line: argument parsing and printing; every verb is one library call."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.text import Text

from promptrec.data import DataError
from promptrec.generate import GenerateConfig
from promptrec.optimize import OptimizeConfig

if TYPE_CHECKING:
    from rich.progress import TaskID

app = typer.Typer(
    help="LLM prompt recovery: recover the rewrite prompt from an original and a rewritten text.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def say(text: str) -> None:
    """Print a result line verbatim (no markup: paths and labels contain brackets)."""
    out.print(text, markup=False)


Embed = Annotated[str, typer.Option("--embedder", "-e", help="official (sentence-t5-base), proxy (packaged MiniLM) or a folder")]
ConfigFile = Annotated[Optional[Path], typer.Option(help="YAML/JSON file of method options")]
MethodSet = Annotated[list[str], typer.Option("--set", help="method option key=value (repeatable)")]
# The defaults of `generate` and `optimize-prompt` are their config dataclasses' own: each lives in one place.
GENERATE, OPTIMIZE = GenerateConfig(), OptimizeConfig()


@app.callback()
def _setup(threads: Annotated[int, typer.Option(help="torch threads (0: PROMPTREC_THREADS or all cores)")] = 0) -> None:
    """Set thread counts and route the package's log records to stderr, once for every verb."""
    from promptrec.models import quiet_libraries, set_threads

    quiet_libraries()
    set_threads(threads or None)
    _log_to_stderr()


class _LineHandler(RichHandler):
    """A log record as one unwrapped line (INFO plain, "warning: ..." in yellow), so piped logs stay greppable."""

    def render(self, *, record: logging.LogRecord, traceback, message_renderable) -> Text:
        if record.levelno <= logging.INFO:
            return message_renderable
        style = "yellow" if record.levelno == logging.WARNING else "red"
        return Text.assemble((f"{record.levelname.lower()}: ", style), message_renderable)


def _log_to_stderr() -> None:
    """Render `promptrec.*` log records (INFO and up) on stderr through Rich; installed once per process."""
    logger = logging.getLogger("promptrec")
    if not any(isinstance(handler, _LineHandler) for handler in logger.handlers):
        logger.addHandler(_LineHandler(console=err, markup=False, highlighter=None, show_time=False, show_path=False))
        logger.setLevel(logging.INFO)


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


def _build_method(name: str, config: Optional[Path], settings: list[str], saved: Optional[Path] = None):
    """Method `name` with the options saved in `saved` (a folder written by `train`), then --config, then --set."""
    from promptrec.methods.base import from_name, load_config_file, read_config

    values: dict[str, object] = {}
    if saved is not None:
        found, values = read_config(saved)
        if found != name:
            raise DataError(f"--from {saved}: holds a saved '{found}' method, not '{name}'")
    values.update(load_config_file(config) if config else {})
    values.update(_options(settings))
    return from_name(name, **values)


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars (shown only when stderr is a terminal)")]


def _bars_shown(quiet: bool) -> bool:
    """Progress bars only on a terminal stderr and without --quiet: piped and logged output stays plain lines."""
    return not quiet and err.is_terminal


@contextmanager
def _progress_bars(quiet: bool) -> Iterator[None]:
    """Rich bars with ETA on stderr for the steps the library reports (`promptrec.progress`), where `_bars_shown`."""
    from promptrec.progress import showing

    if not _bars_shown(quiet):
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    # Result lines on a terminal stdout go above the bars; a redirected stdout keeps them.
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=err, speed_estimate_period=600,
                    redirect_stdout=out.is_terminal)
    tasks: dict[str, tuple[TaskID, int]] = {}  # task name -> (bar, units done)

    def show(task: str, done: int, total: int | None, detail: str) -> None:
        if task not in tasks:
            tasks[task] = (bars.add_task(task, total=total), done)
        elif done < tasks[task][1]:  # the task runs again (the next cv fold's fit): restart its clock
            bars.reset(tasks[task][0], total=total)
        tasks[task] = (tasks[task][0], done)
        bars.update(tasks[task][0], completed=done, total=total, description=f"{task} {detail}".rstrip())

    with bars, showing(show):
        yield


@app.command()
def clean(
    src: Annotated[Path, typer.Argument(help="table with a rewritten_text column")],
    dst: Annotated[Path, typer.Argument(help="output table (.csv, .parquet, .jsonl)")],
    drop_empty: Annotated[bool, typer.Option(help="drop rows whose rewrite is empty after cleaning")] = False,
    keep_evidence: Annotated[bool, typer.Option("--keep-evidence/--strip-evidence", help="keep lead-ins, titles and refusals: recover sees them in test "
                                                     "rewrites, so training rewrites keep them too")] = True,
) -> None:
    """Clean noise (control characters, whitespace, blank lines) out of rewritten texts, and with --strip-evidence
    also LLM chatter, headings and refusals; print how many rows each rule hit."""
    from promptrec.clean import clean_frame

    report, dropped = clean_frame(src, dst, drop_empty=drop_empty, keep_evidence=keep_evidence)
    say(f"cleaned {report.rows} rows -> {dst}")
    for line in report.lines():
        say(f"  {line}")
    say(f"  empty after cleaning: {report.empty}" + (f" (dropped {dropped})" if drop_empty else ""))


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
    emb = save_embeddings(output, texts, model, progress=err.is_terminal)
    say(f"embedded {len(texts)} texts -> {output} shape {emb.shape} [{model.label}]")


@app.command()
def score(
    pred: Annotated[Path, typer.Argument(help="predictions: id,rewrite_prompt")],
    truth: Annotated[Path, typer.Argument(help="truth: id,rewrite_prompt (other columns ignored)")],
    embedder: Embed = "proxy",
    per_row: Annotated[Optional[Path], typer.Option(help="write per-row scores to this CSV")] = None,
) -> None:
    """Mean sharpened cosine similarity of predicted vs true prompts, labelled with its embedder."""
    from promptrec.metric import load_embedder, score_files

    result = score_files(pred, truth, load_embedder(embedder), per_row, progress=err.is_terminal)
    say(str(result))


@app.command()
def recover(
    test: Annotated[Path, typer.Argument(help="pairs: id,original_text,rewritten_text")],
    output: Annotated[Path, typer.Option("-o", "--output", help="submission CSV to write")] = Path("submission.csv"),
    method: Annotated[str, typer.Option(help="method name (see `promptrec methods`)")] = "constant",
    model: Annotated[Optional[Path], typer.Option(help="folder saved by `promptrec train` or `promptrec fit` (overrides --method)")] = None,
    examples: Annotated[Optional[Path], typer.Option(help="triples to fit the method on before recovering")] = None,
    config: ConfigFile = None,
    setting: MethodSet = [],
    quiet: Quiet = False,
) -> None:
    """Recover one prompt per row and write `id,rewrite_prompt` (never blank, input order)."""
    from promptrec.methods.base import load_method
    from promptrec.pipeline import recover as run

    chosen = load_method(model) if model else _build_method(method, config, setting)
    with _progress_bars(quiet):
        rows = run(test, output, chosen, examples=examples)
    say(f"wrote {rows} prompts -> {output} (method {chosen.name})")


@app.command()
def explain(
    model: Annotated[Path, typer.Option(help="folder saved by `promptrec train` or `promptrec fit`")],
    row: Annotated[Optional[str], typer.Option(help="id of the row to explain (with --data)")] = None,
    data: Annotated[Optional[Path], typer.Option(help="table holding the row; its rewrite_prompt, if any, is the truth")] = None,
    original: Annotated[Optional[str], typer.Option(help="original text (with --rewritten, instead of --row/--data)")] = None,
    rewritten: Annotated[Optional[str], typer.Option(help="rewritten text")] = None,
    truth: Annotated[Optional[str], typer.Option(help="the true prompt: every candidate is scored against it")] = None,
    top_k: Annotated[int, typer.Option(help="nearest bank prompts listed per member")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document instead of the view")] = False,
) -> None:
    """Audit one case: the evidence in the rewrite, each member's prompt, the gate's choice, the nearest bank
    prompts and the final prompt (scored against the truth when known); writes nothing."""
    from promptrec.explain import check_top_k, explain as run, open_model, read_case, render

    check_top_k(top_k)  # bad input is named before models load
    case = read_case(data, row, original, rewritten, truth)
    found = run(open_model(model), case, top_k)
    if as_json:
        typer.echo(found.to_json())  # not through Rich: it would turn ":name:" in a text into an emoji
    else:
        out.print(render(found))


@app.command()
def train(
    method: Annotated[str, typer.Argument(help="method name")],
    data: Annotated[Path, typer.Argument(help="triples: id,original_text,rewrite_prompt,rewritten_text")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder to save the trained method")],
    config: ConfigFile = None,
    setting: MethodSet = [],
    start: Annotated[Optional[Path], typer.Option("--from", help="a folder this method was saved in by `train`: "
                                                  "train that fit further (its options, then --config, --set)")] = None,
    quiet: Quiet = False,
) -> None:
    """Train ONE method on triples and save it (JSON config + safetensors/npy, never pickle); re-run the same
    command to continue an interrupted training from its checkpoint in OUTPUT.partial; `--from MODEL --set
    max_steps=N` trains a finished lora fit on to N updates."""
    from promptrec.pipeline import train as run

    with _progress_bars(quiet):
        rows = run(_build_method(method, config, setting, saved=start), data, output, start=start)
    say(f"trained {method} on {rows} rows -> {output}")


@app.command()
def methods() -> None:
    """List the registered recovery methods."""
    from promptrec.methods.base import METHODS

    for name in METHODS:
        say(name)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context, name: Annotated[str, typer.Argument(help="benchmark name (a file in bench/)")]) -> None:
    """Run a benchmark from bench/ and print its side-by-side ratios; other options go to the benchmark."""
    import runpy

    folder = Path(__file__).resolve().parents[2] / "bench"
    script = folder / f"{name}.py"
    if not script.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.py"))) or "none found"
        raise DataError(f"unknown benchmark '{name}' (known: {known})")
    sys.argv = [f"promptrec bench {name}", *ctx.args]
    runpy.run_path(str(script), run_name="__main__")


def _labelled_options(config: Optional[Path], settings: list[str]) -> dict[str, dict[str, object]]:
    """Options per method label from a YAML/JSON file (label: {key: value}) and `--set label.key=value`."""
    from promptrec.methods.base import load_config_file

    values: dict[str, dict[str, object]] = {}
    for label, options in (load_config_file(config) if config else {}).items():
        if not isinstance(options, dict):
            raise DataError(f"{config}: '{label}' must map option names to values")
        values[str(label)] = dict(options)
    for key, value in _options(settings).items():
        label, dot, option = key.partition(".")
        if not dot or not option:
            raise DataError(f"--set '{key}={value}': expected label.key=value")
        values.setdefault(label, {})[option] = value
    return values


Methods = Annotated[str, typer.Option("--methods", "-m", help="comma-separated methods, each 'name' or 'label=name'")]
LabelConfig = Annotated[Optional[Path], typer.Option(help="YAML/JSON file: label: {option: value}")]
LabelSet = Annotated[list[str], typer.Option("--set", help="option of one method: label.key=value (repeatable)")]


@app.command()
def cv(
    data: Annotated[list[Path], typer.Argument(help="triple files (one per rewriter; results are also given per file)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="report folder (report.md, oof.csv, PNG plots)")],
    methods: Methods = "constant",
    by: Annotated[str, typer.Option(help="text: K folds grouped by original_text; source: hold out each file in turn "
                                         "(files sharing original texts together)")] = "text",
    folds: Annotated[int, typer.Option(help="folds, grouped by original_text (--by text)")] = 5,
    embedder: Embed = "proxy",
    limit: Annotated[int, typer.Option(help="score at most N held-out rows per fold (seeded subsample; 0: all)")] = 0,
    seed: Annotated[int, typer.Option(help="seed of the folds and the subsample")] = 0,
    config: LabelConfig = None,
    setting: LabelSet = [],
    quiet: Quiet = False,
) -> None:
    """Cross-validate methods on leak-free folds and write a report folder; reruns reuse finished folds."""
    from promptrec.cv import CVSettings, run_cv
    from promptrec.report import summary

    with _progress_bars(quiet):
        result = run_cv(data, methods.split(","), output, _labelled_options(config, setting),
                        CVSettings(folds=folds, seed=seed, limit=limit, by=by), embedder, log=say)
    over = f"{len(result.folds.names)} {result.folds.unit}"
    for label, row in summary(result).iterrows():
        say(f"{label}: {row['mean']:.4f} ± {row['std']:.4f} over {over} [{result.label}, {int(row['rows'])} rows]")
    say(f"report -> {output / 'report.md'}")


@app.command("optimize-prompt")
def optimize_prompt(
    prompts: Annotated[list[Path], typer.Argument(help="prompt files: JSON lists, .txt lines, or tables' rewrite_prompt column")],
    embedder: Embed = "proxy",
    start: Annotated[Optional[str], typer.Option(help="start text (default: the best training prompt)")] = None,
    steps: Annotated[int, typer.Option(help="beam-search steps at most")] = OPTIMIZE.steps,
    seconds: Annotated[float, typer.Option(help="time budget of the search in seconds")] = OPTIMIZE.seconds,
    beam: Annotated[int, typer.Option(help="texts kept per step")] = OPTIMIZE.beam,
    edits: Annotated[int, typer.Option(help="random edits tried per beam text per step")] = OPTIMIZE.edits,
    vocab_size: Annotated[int, typer.Option(help="most frequent training words used as the vocabulary")] = OPTIMIZE.vocab_size,
    guided: Annotated[float, typer.Option(help="share of edits drawing words the objective's gradient favours (0: uniform)")] = OPTIMIZE.guided,
    seed: Annotated[int, typer.Option(help="seed of the edits and of the held-out split")] = OPTIMIZE.seed,
    holdout: Annotated[float, typer.Option(help="fraction of distinct prompts held out for the before/after score")] = 0.0,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="write the result and trajectory as JSON")] = None,
) -> None:
    """Find one text maximising the mean score against the prompts (beam search, then pruning)."""
    from promptrec.data import read_texts
    from promptrec.metric import load_embedder
    from promptrec.optimize import optimize_prompts, save_report

    texts = [text for path in prompts for text in read_texts(path, "rewrite_prompt")]
    model = load_embedder(embedder)
    search = OptimizeConfig(steps=steps, seconds=seconds, beam=beam, edits=edits, vocab_size=vocab_size, seed=seed,
                            guided=guided)
    report = optimize_prompts(texts, model, start, search, holdout,
                              on_step=lambda s: say(f"step {s.step:3d}  {s.score:.4f}  {s.text}"))
    say(f"train ({report.train_rows} prompts): start {report.train_start:.4f} -> final {report.result.score:.4f} "
              f"[{report.label}]")
    if report.holdout_rows:
        say(f"held out ({report.holdout_rows} prompts): start {report.holdout_start:.4f} -> final "
                  f"{report.holdout_final:.4f} [{report.label}]")
    say(f"final: {report.result.text}")
    if output:
        save_report(output, report)


@app.command()
def fit(
    data: Annotated[list[Path], typer.Argument(help="triple files to train on")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder for the ensemble (use with recover --model)")],
    methods: Annotated[Optional[str], typer.Option(
        "--methods", "-m", help="members, 'name' or 'label=name' (default: --config's ensemble.members, else "
                                "best=constant,bank,regressor,evidence with a learned gate)")] = None,
    config: LabelConfig = None,
    setting: LabelSet = [],
    quiet: Quiet = False,
) -> None:
    """Train EVERY member method AND the ensemble over them, saved in one folder (--set ensemble.mode=select)."""
    from promptrec.pipeline import fit_ensemble

    with _progress_bars(quiet):
        ensemble = fit_ensemble(data, output, methods.split(",") if methods else None, _labelled_options(config, setting))
    hedge = f"; hedge '{ensemble.hedge}'" if ensemble.hedge else ""
    say(f"saved ensemble ({ensemble.config.mode}; members {', '.join(ensemble.members)}{hedge}) -> {output}")


@app.command()
def bundle(
    output: Annotated[Path, typer.Option("-o", "--output", help="new folder to write the bundle to")],
    model: Annotated[Path, typer.Option(help="folder saved by `promptrec train` or `promptrec fit`")],
    platform: Annotated[str, typer.Option(help="pip platform tag of the target, e.g. manylinux_2_28_x86_64 "
                                               "(default: this machine; binary wheels only)")] = "",
    python_version: Annotated[str, typer.Option(help="the target's Python as X.Y (default: this one)")] = "",
    extras: Annotated[str, typer.Option(help="comma-separated promptrec extras to carry besides those the model "
                                             "needs")] = "",
    deps: Annotated[bool, typer.Option("--deps/--no-deps", help="carry the pinned dependencies and weight "
                                       "packages; --no-deps: promptrec's wheel and the model only")] = True,
    torch_index: Annotated[str, typer.Option(help="extra index holding the CPU torch wheel (default: pip's own)")] = "",
) -> None:
    """Write a folder to copy to a machine with no network: wheels, the fitted model, install.sh and a README."""
    from promptrec.bundle import BundleConfig, build_bundle

    config = BundleConfig(platform=platform, python_version=python_version, deps=deps, torch_index=torch_index,
                          extras=[extra.strip() for extra in extras.split(",") if extra.strip()])
    manifest = build_bundle(model, output, config)
    sizes = manifest["bytes"]
    say(f"bundle -> {output}: {len(manifest['wheels'])} wheels {sizes['wheels'] / 1e6:.1f} MB, "
        f"model {sizes['models'] / 1e6:.1f} MB (Python {manifest['python']}, {manifest['platform']})")
    for command in manifest["install"]:
        say(f"  install: {command}")
    say(f"  recover: {manifest['recover']}")


@app.command()
def generate(
    texts: Annotated[Path, typer.Option(help="source texts: table column, JSON list, .txt lines or a folder of .txt")],
    prompts: Annotated[Path, typer.Option(help="rewrite prompts: table column, JSON list or .txt lines")],
    output: Annotated[Path, typer.Option("-o", "--output", help="triples table to write (.csv, .parquet, .jsonl)")],
    rewriter: Annotated[str, typer.Option(help="smollm2, gemma3-270m, a .gguf path, hub id or folder")] = GENERATE.rewriter,
    backend: Annotated[Optional[str], typer.Option(help="llamacpp, hf or vllm (default: implied by --rewriter)")] = GENERATE.backend,
    n: Annotated[int, typer.Option("--n", help="triples to keep")] = GENERATE.n,
    seed: Annotated[int, typer.Option(help="pair sampling and sampling seed")] = GENERATE.seed,
    max_input_tokens: Annotated[int, typer.Option(help="cut texts at a sentence boundary to fit")] = GENERATE.max_input_tokens,
    max_new_tokens: Annotated[int, typer.Option(help="longest rewrite in tokens")] = GENERATE.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="sampling temperature (0: greedy)")] = GENERATE.temperature,
    top_p: Annotated[float, typer.Option(help="nucleus sampling")] = GENERATE.top_p,
    batch: Annotated[int, typer.Option(help="prompts per LLM call and per journal flush")] = GENERATE.batch,
    parallel: Annotated[int, typer.Option(help="sequences decoded together (llama.cpp) / batch size (transformers)")] = GENERATE.parallel,
    text_column: Annotated[str, typer.Option(help="column of --texts when it is a table")] = GENERATE.text_column,
    prompt_column: Annotated[str, typer.Option(help="column of --prompts when it is a table")] = GENERATE.prompt_column,
    setting: Annotated[list[str], typer.Option("--set", help="backend option key=value, e.g. quant=q4_0, n_threads=2, device=cuda (repeatable)")] = [],
    quiet: Quiet = False,
) -> None:
    """Make training triples with a rewriter LLM; re-run the same command to resume an interrupted run."""
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )
    from rich.text import Text

    from promptrec.generate import generate_triples

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.2f} rows/s" if task.speed else "- rows/s")

    config = GenerateConfig(
        rewriter=rewriter, backend=backend, n=n, seed=seed, max_input_tokens=max_input_tokens,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch=batch,
        parallel=parallel, text_column=text_column, prompt_column=prompt_column, backend_options=_options(setting),
    )
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    progress = Progress(*columns, console=err, speed_estimate_period=600,  # batches can take minutes
                        disable=not _bars_shown(quiet))
    task = progress.add_task("generate", total=n)
    started: list[int] = []

    def update(kept: int, total: int) -> None:
        if not started:  # shown once inputs are read; rows resumed from the journal do not count towards the rate
            started.append(kept)
            progress.start()
            progress.reset(task, completed=kept)
        progress.update(task, completed=kept)

    try:
        summary = generate_triples(config=config, texts_path=texts, prompts_path=prompts, out=output, on_progress=update)
    except KeyboardInterrupt:
        progress.stop()
        err.print(f"[yellow]interrupted[/]: finished rows are kept in {escape(str(output))}.partial; re-run the same command to continue")
        raise typer.Exit(130) from None
    finally:
        progress.stop()
    for line in summary.lines():
        say(line)


@app.command("regressor-report")
def regressor_report(
    model: Annotated[Path, typer.Argument(help="folder saved by `promptrec train regressor`")],
    data: Annotated[Path, typer.Argument(help="held-out triples: id,original_text,rewrite_prompt,rewritten_text")],
) -> None:
    """Score a trained regressor on labelled triples: embedding-space score, decoded score, bank oracle."""
    from promptrec.methods.regressor import RegressorMethod
    from promptrec.pipeline import read_triples

    triples = read_triples(data)  # first: a bad table is named even when the model folder is wrong too
    for line in RegressorMethod.load(model).report(triples).lines():
        say(line)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning expected errors into one coloured line and exit code 2."""
    try:
        app(args=argv)
    except DataError as error:
        err.print(f"[red]error:[/] {escape(str(error))}")
        sys.exit(2)
    except OSError as error:  # disk full, permissions, vanished files: one line, never a traceback
        where = f"{error.filename}: " if error.filename else ""
        err.print(f"[red]error:[/] {escape(where + (error.strerror or str(error)))}")
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
