"""`loopscale data prepare` and `loopscale data info`: parse, call ``loopscale.data``, print a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from loopscale.errors import UserError


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
    table.add_row("sources", ", ".join(f"{s['name']}" + (f" {s['version']}" if s.get("version") else "")
                                       for s in meta.get("sources", [])))
    return table


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Prepare and inspect tokenized corpora.", no_args_is_help=True)

    @data_app.command()
    def prepare(
        out: Optional[Path] = typer.Option(None, help="Data directory (default $LOOPSCALE_DATA or ./data/default)."),
        tokenizer: Optional[str] = typer.Option(None, help="bytes | bpe:<vocab> (default bpe:4096)."),
        input: Optional[list[Path]] = typer.Option(None, "--input", help="Your own text: .txt/.jsonl file or "
                                                   "folder; repeatable. Without it: the default corpus."),
        train_bin: Optional[Path] = typer.Option(None, help="Pre-tokenized train .bin (nanoGPT style)."),
        val_bin: Optional[Path] = typer.Option(None, help="Pre-tokenized validation .bin."),
        vocab_size: Optional[int] = typer.Option(None, help="Vocabulary size of the .bin files."),
        dtype: str = typer.Option("uint16", help="Token dtype of the .bin files: uint16 | uint32."),
        bos_id: Optional[int] = typer.Option(None, help="Document separator id in the .bin files, if any."),
        val_fraction: Optional[float] = typer.Option(None, help="Held-out share of each source's text (0.1)."),
        seed: int = typer.Option(0, help="Seed of the document split."),
        cache_dir: Optional[Path] = typer.Option(None, help="Where fetched archives are kept "
                                                 "(default $LOOPSCALE_CACHE or ~/.cache/loopscale/sources)."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if the directory holds a dataset."),
    ) -> None:
        """Build a data directory: the default corpus, your text (--input) or .bin files (--train-bin)."""
        from loopscale import data

        console = Console()
        log = lambda msg: console.print(f"[dim]{msg}[/]", highlight=False)
        out_dir = out or data.default_data_dir()
        frac = data.DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        if train_bin or val_bin:
            if input or tokenizer or val_fraction is not None:
                raise UserError("--train-bin/--val-bin import tokens as they are: drop --input, --tokenizer "
                                "and --val-fraction")
            if not (train_bin and val_bin and vocab_size):
                raise UserError("importing .bin files needs --train-bin, --val-bin and --vocab-size")
            done = data.import_bin(train_bin, val_bin, out_dir, vocab_size, dtype, bos_id, force=force)
        elif input:
            done = data.prepare_text(input, out_dir, tokenizer or data.DEFAULT_TOKENIZER, frac, seed, force, log)
        else:
            done = data.prepare_default(out_dir, tokenizer or data.DEFAULT_TOKENIZER, cache_dir, frac, seed,
                                        force, log)
        if done.reused:
            console.print(f"{done.dir} already holds this dataset; nothing to do (--force rebuilds it).")
            return
        console.print(_summary(done.meta, done.dir, f"prepared in {done.seconds:.1f} s"))

    @data_app.command()
    def info(data_dir: Optional[Path] = typer.Argument(None, help="Data directory (default ./data/default).")):
        """Show what a data directory holds."""
        from loopscale import data

        ds = data.load_data(data_dir or data.default_data_dir())
        Console().print(_summary(ds.meta, ds.dir, "dataset"))

    app.add_typer(data_app, name="data")
