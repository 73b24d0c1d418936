"""`loopscale data prepare` and `loopscale data info`: parse, call ``loopscale.data``'s prepares and reader, print
a summary (with the data's identity, ``loopscale.data.identity``). Every prepare holds the folder's lock while it
writes (``loopscale.data.writing``): a second one into the same folder is refused with one line, exit 2."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from loopscale.errors import UserError


class PrepareProgress:
    """Progress of a streaming prepare: on a terminal a bar of input bytes with tokens/s and the time left
    (by bytes); otherwise (logs, pipes) a line on stderr every ``every_s`` seconds."""

    def __init__(self, enabled: bool | None = None, every_s: float = 30.0):
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.every_s, self._last = every_s, 0.0
        self._bar, self._tasks, self._started, self._done = None, {}, {}, set()

    def __call__(self, phase: str, done: int, total: int, tokens: int) -> None:
        now = time.monotonic()
        start = self._started.setdefault(phase, (now, done))
        rate = tokens / max(now - start[0], 1e-9)
        shown = f"{rate:,.0f} tok/s" if tokens else ""
        if self.interactive:
            if self._bar is None:
                self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                     console=Console(stderr=True))
                self._bar.start()
            if phase not in self._tasks:
                self._tasks[phase] = self._bar.add_task(phase, total=total, completed=done, rate="")
            self._bar.update(self._tasks[phase], completed=done, rate=shown)
        elif now - self._last >= self.every_s or (done >= total and phase not in self._done):
            self._last = now
            if done >= total:
                self._done.add(phase)
            speed = (done - start[1]) / max(now - start[0], 1e-9)
            left = f", {(total - done) / speed / 60:.1f} min left" if speed > 0 and done < total else ""
            print(f"{phase}: {decimal(done)} of {decimal(total)}{', ' + shown if shown else ''}{left}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _summary(meta: dict, data_dir: Path, title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    docs = lambda split: "" if meta.get(f"{split}_docs") is None else f" in {meta[f'{split}_docs']:,} docs"
    table.add_row("dir", str(data_dir))
    table.add_row("tokenizer", f"{meta['tokenizer']} (vocab {meta['vocab_size']:,}, {meta['dtype']}, "
                               f"BOS id {meta['bos_id']})")
    table.add_row("train", f"{meta['train_tokens']:,} tokens{docs('train')}")
    table.add_row("val", f"{meta['val_tokens']:,} tokens{docs('val')}")
    table.add_row("val unigram entropy", f"{meta['val_unigram_entropy']:.4f} nats/token")
    table.add_row("data id", str(meta.get("data_id")))
    table.add_row("sources", ", ".join(f"{s['name']}" + (f" {s['version']}" if s.get("version") else "")
                                       + (f" ({s['files']:,} files, {s['bytes'] / 1e6:,.1f} MB)" if "bytes" in s
                                          else "") for s in meta.get("sources", [])))
    return table


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Prepare and inspect tokenized corpora.", no_args_is_help=True)

    @data_app.command()
    def prepare(
        out: Optional[Path] = typer.Option(None, help="Data directory (default $LOOPSCALE_DATA or ./data/default)."),
        tokenizer: Optional[str] = typer.Option(None, help="bytes | bpe:<vocab> (default bpe:4096) | the path "
                                                "of a pretrained tokenizer.json (e.g. Llama-2's)."),
        input: Optional[list[str]] = typer.Option(None, "--input", help="Your own text: .jsonl, .jsonl.gz, "
                                                  ".parquet or .txt files, folders or globs; repeatable. "
                                                  "Without it: the default corpus."),
        text_field: Optional[str] = typer.Option(None, help="JSON key / parquet column of the text (text)."),
        bos_token: Optional[str] = typer.Option(None, help="BOS of a pretrained tokenizer.json, where it "
                                                "names none (e.g. '<s>')."),
        train_bin: Optional[Path] = typer.Option(None, help="Pre-tokenized train .bin (nanoGPT style)."),
        val_bin: Optional[Path] = typer.Option(None, help="Pre-tokenized validation .bin."),
        vocab_size: Optional[int] = typer.Option(None, help="Vocabulary size of the .bin files."),
        dtype: str = typer.Option("uint16", help="Token dtype of the .bin files: uint16 | uint32."),
        bos_id: Optional[int] = typer.Option(None, help="Document separator id in the .bin files, if any."),
        val_fraction: Optional[float] = typer.Option(None, help="Held-out share of each source's text (0.1)."),
        seed: int = typer.Option(0, help="Seed of the document split."),
        cache_dir: Optional[Path] = typer.Option(None, help="Where fetched archives are kept "
                                                 "(default $LOOPSCALE_CACHE or ~/.cache/loopscale/sources)."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if the directory holds a dataset: "
                                   "written beside it and swapped in at the end (room for both needed; jobs "
                                   "reading the old files keep them)."),
    ) -> None:
        """Build a data directory: the default corpus, your text (--input) or .bin files (--train-bin)."""
        from loopscale.data.format import default_data_dir
        from loopscale.data.prepare import DEFAULT_TOKENIZER, DEFAULT_VAL_FRACTION, import_bin, prepare_default
        from loopscale.data.stream import prepare_stream

        console = Console()
        log = lambda msg: console.print(f"[dim]{msg}[/]", highlight=False)
        out_dir = out or default_data_dir()
        frac = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        if (text_field is not None or bos_token is not None) and not input:
            raise UserError("--text-field and --bos-token apply to your text: give it with --input")
        if train_bin or val_bin:
            if input or tokenizer or val_fraction is not None:
                raise UserError("--train-bin/--val-bin import tokens as they are: drop --input, --tokenizer "
                                "and --val-fraction")
            if not (train_bin and val_bin and vocab_size):
                raise UserError("importing .bin files needs --train-bin, --val-bin and --vocab-size")
            done = import_bin(train_bin, val_bin, out_dir, vocab_size, dtype, bos_id, force=force)
        elif input:
            bar = PrepareProgress()
            try:
                done = prepare_stream(input, out_dir, tokenizer or DEFAULT_TOKENIZER, frac, seed, force, log,
                                      text_field=text_field or "text", bos_token=bos_token, progress=bar)
            except KeyboardInterrupt:
                bar.close()
                Console(stderr=True).print("rerun the same command to resume from the last committed file")
                raise
            finally:
                bar.close()
        else:
            done = prepare_default(out_dir, tokenizer or DEFAULT_TOKENIZER, cache_dir, frac, seed, force, log)
        if done.reused:
            console.print(f"{done.dir} already holds this dataset; nothing to do (--force rebuilds it).")
            return
        console.print(_summary(done.meta, done.dir, f"prepared in {done.seconds:.1f} s"))

    @data_app.command()
    def info(data_dir: Optional[Path] = typer.Argument(None, help="Data directory (default ./data/default).")):
        """Show what a data directory holds."""
        from loopscale.data.dataset import load_data
        from loopscale.data.format import default_data_dir
        from loopscale.data.identity import data_id

        ds = load_data(data_dir or default_data_dir())
        found = data_id(ds.dir)  # a folder made before identities existed gets its identity here, once
        Console().print(_summary({**ds.meta, "data_id": found}, ds.dir, "dataset"))

    app.add_typer(data_app, name="data")
