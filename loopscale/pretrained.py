"""A pretrained Hugging Face ``tokenizer.json`` (Llama-2's, GPT-2's, ...) as a loopscale tokenizer; the path
may also be the folder that holds it.

Its vocabulary size is one more than its largest id (added tokens included). Its BOS is, in this order:
the token the user names (``--bos-token``); the special token its post-processor puts before the text
(a ``TemplateProcessing`` template such as Llama-2's ``<s> $A``, also inside a ``Sequence`` of processors,
or the ``cls`` token of a RoBERTa/BERT processor); else the first of the tokens conventionally used as BOS
that it holds (``CONVENTIONAL_BOS``). The post-processor itself is never run: texts are encoded with
``add_special_tokens=False`` and loopscale puts exactly one BOS before each document. Special-token
strings inside a text are encoded as text. Truncation and padding stored in the file are switched off.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from loopscale.corpus import sha256_file
from loopscale.errors import UserError

CONVENTIONAL_BOS = ("<s>", "<|begin_of_text|>", "<|bos|>", "<bos>", "<|endoftext|>")


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
            self.path = self.path / "tokenizer.json"
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
