"""Tokenized corpora on disk: the data directory's format, and how one is prepared and read.

- ``format``: the file names (train.bin, val.bin, meta.json, tokenizer.json, train.docs.npy), the token
  dtype, and the one writer and reader of meta.json;
- ``tokenizer``: bytes, a BPE trained here, a pretrained tokenizer.json;
- ``corpus``: the default corpus (Brown + Shakespeare), fetched and cleaned; ``sources``: the user's text files;
- ``prepare``: the default corpus and .bin imports into a data directory, and what every prepare shares;
  ``stream``: the user's text, streamed and resumable (``journal``, ``threaded``); ``writing``: how each of
  them writes (under the folder's ``lock``, meta.json last with the data's ``identity``, ``--force`` staged
  beside the old data and swapped in);
- ``identity``: a data dir's content identity (``data_id``), what a run trained on;
- ``dataset``: a prepared directory read back (``load_data``), its document index and unigram entropy.

This package imports only the core modules (errors, atomic, ...), never torch; training reads it. Importing
``loopscale.data`` loads nothing: import the module you need.
"""
