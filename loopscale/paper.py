"""The paper's numbers, in one place: the architecture it scales, the sequence length and vocabulary its
FLOP counts assume, its recurrence counts, and the GPU rate `plan` prices GPU-hours at. Everything else
(``counting.Arch``'s defaults, ``fit --equiv``, ``plan``'s GPU-hours, the paper design of the tests) reads
them from here. ``docs/method.md`` says where each comes from."""

from __future__ import annotations

# The looped architecture (method: prelude → shared block × r → coda at a fixed effective depth).
N_LAYERS_EFF = 20  # effective depth: n_prelude + r · n_rec_layers + n_coda
N_PRELUDE = 2
N_CODA = 2
HEAD_DIM = 128

# What its FLOP and parameter counts assume.
SEQ_LEN = 2048  # T, for the attention FLOPs
VOCAB = 32064  # padded vocabulary V, for the embedding FLOPs

RS = (1, 2, 4, 8)  # the recurrence counts of its sweeps

# GPU-hours in `plan`: an H100's dense bf16 peak at the model FLOP utilisation the paper's runs reach.
H100_BF16_DENSE_TFLOPS = 989.0
MFU = 0.4
