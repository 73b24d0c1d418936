"""Tokenizers of a data directory: ``bytes``, a byte-level BPE trained here (``bpe:<V>``), and a pretrained
Hugging Face ``tokenizer.json`` (Llama-2's, GPT-2's, ...); ``parse_tokenizer`` reads the spec that names one.

``bytes``: UTF-8 bytes, byte 0 (NUL, stripped from all input text) is BOS. ``bpe:<V>``: the ``tokenizers``
package's byte-level BPE with the special token ``<|bos|>`` = id 0, room for 256 bytes + BOS.

A pretrained tokenizer's path may also be the folder that holds it.
Its vocabulary size is one more than its largest id (added tokens included). Its BOS is, in this order:
the token the user names (``--bos-token``); the special token its post-processor puts before the text
(a ``TemplateProcessing`` template such as Llama-2's ``<s> $A``, also inside a ``Sequence`` of processors,
or the ``cls`` token of a RoBERTa/BERT processor); else the first of the tokens conventionally used as BOS
that it holds (``CONVENTIONAL_BOS``). The post-processor itself is never run: texts are encoded with
``add_special_tokens=False`` and loopscale puts exactly one BOS before each document. Special-token
strings inside a text are encoded as text. Truncation and padding stored in the file are switched off.

The ``tokenizers`` library is imported only when a BPE or pretrained tokenizer is built.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from loopscale.data.corpus import sha256_file
from loopscale.data.format import TOKENIZER_JSON
from loopscale.errors import UserError

BOS_TOKEN = "<|bos|>"
CONVENTIONAL_BOS = ("<s>", "<|begin_of_text|>", "<|bos|>", "<bos>", "<|endoftext|>")


def is_tokenizer_path(spec: str) -> bool:
    """Whether a tokenizer spec names a pretrained tokenizer.json: a ``.json`` name, an existing file, or a
    folder holding a tokenizer.json (as a downloaded model's folder does)."""
    if spec.lower().endswith(".json"):
        return True
    p = Path(spec).expanduser()
    return spec not in ("bytes", "") and (p.is_file() or (p / TOKENIZER_JSON).is_file())


def parse_tokenizer(spec: str) -> tuple[str, int]:
    """``"bytes"`` -> ("bytes", 256); ``"bpe:4096"`` -> ("bpe", 4096), room for 256 bytes + BOS;
    a path to a tokenizer.json -> ("pretrained", its vocabulary size) (``PretrainedTokenizer``)."""
    if spec == "bytes":
        return "bytes", 256
    kind, _, n = spec.partition(":")
    if kind == "bpe" and n.isdigit():
        if not 257 <= int(n) < 2**32:
            raise UserError(f"tokenizer {spec}: a BPE vocabulary needs 257 to 2^32-1 entries (256 bytes + BOS)")
        return "bpe", int(n)
    if is_tokenizer_path(spec):
        return "pretrained", PretrainedTokenizer(spec).vocab_size
    raise UserError(f"unknown tokenizer {spec!r}: use `bytes`, `bpe:<vocab size>` (e.g. bpe:4096) or the path "
                    "of a tokenizer.json")


class ByteTokenizer:
    """UTF-8 bytes; byte 0 (NUL, stripped from all input text) is BOS."""

    vocab_size = 256
    bos_id = 0

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if i != self.bos_id).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        path.unlink(missing_ok=True)  # no tokenizer file: the bytes are the tokens


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` package; BOS is the special token ``<|bos|>`` = id 0."""

    bos_id = 0

    def __init__(self, tok):
        tok.encode_special_tokens = True  # a literal "<|bos|>" in the text is text, not BOS
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS_TOKEN], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer, length=len(texts) if isinstance(texts, Sequence) else None)
        assert tok.token_to_id(BOS_TOKEN) == cls.bos_id
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint32) for e in self.tok.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        self.tok.save(str(tmp))
        os.replace(tmp, path)


def _template_bos(proc: dict | None) -> tuple[str, int] | None:
    """(token, id) the post-processor puts first in a single sequence, if it puts a special token there."""
    if not isinstance(proc, dict):
        return None
    kind = proc.get("type")
    if kind == "Sequence":
        for p in proc.get("processors") or []:
            if found := _template_bos(p):
                return found
    if kind == "TemplateProcessing":
        single = proc.get("single") or []
        first = single[0] if single else {}
        if "SpecialToken" in first:
            name = first["SpecialToken"]["id"]
            ids = ((proc.get("special_tokens") or {}).get(name) or {}).get("ids") or []
            if len(ids) == 1:
                return name, int(ids[0])
    if kind in ("RobertaProcessing", "BertProcessing") and proc.get("cls"):
        name, i = proc["cls"]
        return name, int(i)
    return None


class PretrainedTokenizer:
    """A tokenizer.json from elsewhere; ``bos_id`` goes before every document (see the module docstring)."""

    def __init__(self, path: str | Path, bos_token: str | None = None):
        from tokenizers import Tokenizer

        self.path = Path(path).expanduser().resolve()
        if self.path.is_dir():
            self.path = self.path / TOKENIZER_JSON
        if not self.path.is_file():
            raise UserError(f"tokenizer file {self.path} does not exist")
        try:
            raw = self.path.read_text(encoding="utf-8")
            tok = Tokenizer.from_str(raw)
            config = json.loads(raw)
        except Exception as e:  # the tokenizers library raises plain Exception on a bad file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{self.path}: not a tokenizer.json the tokenizers library can read ({first})") from None
        tok.no_truncation()
        tok.no_padding()
        tok.encode_special_tokens = True  # "<s>" inside a text is text
        self.tok = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        self.sha256 = sha256_file(self.path)
        self.bos_token, self.bos_id, self.bos_from = self._bos(config, vocab, bos_token)

    def _bos(self, config: dict, vocab: dict[str, int], bos_token: str | None) -> tuple[str, int, str]:
        if bos_token is not None:
            if bos_token not in vocab:
                raise UserError(f"--bos-token {bos_token!r} is not a token of {self.path}")
            return bos_token, vocab[bos_token], "--bos-token"
        if found := _template_bos(config.get("post_processor")):
            return found[0], found[1], "post-processor template"
        for name in CONVENTIONAL_BOS:
            if name in vocab:
                return name, vocab[name], "conventional BOS token"
        raise UserError(f"{self.path}: no BOS token found (no post-processor template, none of "
                        f"{', '.join(CONVENTIONAL_BOS)}); name one with --bos-token TOKEN")

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.array(e.ids, dtype=np.uint32) for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: Path) -> None:
        """The file itself, byte for byte (so its sha256 stays the one recorded)."""
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(self.path, tmp)
        os.replace(tmp, path)
