"""Build a BERT checkpoint (word-level vocabulary + random weights) in a folder, so tests and
benchmarks run the exact `from_pretrained(<dir>)` path a hub id like
sentence-transformers/all-MiniLM-L6-v2 takes, with no network.

The default shape is small enough for unit tests (32 wide, 4 layers); `minilm_sized=True` gives
all-MiniLM-L6-v2's shape (384 wide, 6 layers, 12 heads, ffn 1536) for throughput measurements.
Weights are random: embeddings mean nothing, but the work is real.
"""
from __future__ import annotations

from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_bert(out: Path, words, *, minilm_sized: bool = False, layers: int = 4,
               max_positions: int = 512, seed: int = 0) -> Path:
    """Write a BertModel + BertTokenizerFast over `words` (deduplicated, in order) to `out`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + [w for w in dict.fromkeys(words) if w not in SPECIAL]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt")).save_pretrained(out)
    shape = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536) if minilm_sized else \
        dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(vocab), max_position_embeddings=max_positions,
                         **shape)).save_pretrained(out)
    return out
