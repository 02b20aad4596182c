"""Build a MarianMT checkpoint (sentencepiece tokenizers + random weights) in a folder, so tests
and benchmarks run the exact `from_pretrained(<dir>)` path a hub id like
Helsinki-NLP/opus-mt-en-es takes, with no network.

`d_model=32` gives a model small enough for unit tests; `opus_mt_sized=True` gives the shape of
a real OPUS-MT model (d_model 512, 6+6 layers, 8 heads, ffn 2048, ~58k vocabulary) for
throughput measurements. Weights are random: outputs are gibberish, but the work is real.
"""
from __future__ import annotations

import json
from pathlib import Path


def build_marian(out: Path, sentences: list[str], *, spm_vocab: int = 200,
                 opus_mt_sized: bool = False, seed: int = 0, never_stop: bool = True) -> Path:
    """Write a MarianMT model + MarianTokenizer to `out` and return it.

    never_stop: forbid the end-of-sentence token (the default), so every output runs to the
    length budget the caller derives: outputs are never empty and their length is known, which
    shows the budget grows with the input instead of being a fixed cut.
    """
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    for name in ("source", "target"):
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(out / name), vocab_size=spm_vocab,
            character_coverage=1.0, model_type="unigram", bos_id=-1, eos_id=-1, pad_id=-1,
            unk_id=0, hard_vocab_limit=False, minloglevel=2, num_threads=1)
        (out / f"{name}.model").rename(out / f"{name}.spm")
        (out / f"{name}.vocab").unlink()
    corpus.unlink()
    # Marian's shared vocabulary: </s>=0, <unk>=1, <pad> last-but-none; then both spm pieces.
    pieces: list[str] = []
    for name in ("source", "target"):
        proc = spm.SentencePieceProcessor(model_file=str(out / f"{name}.spm"))
        pieces += [proc.id_to_piece(i) for i in range(proc.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    if opus_mt_sized:  # an OPUS-MT vocabulary is ~58k; fill it so the output layer costs the same
        while len(vocab) < 58100:
            vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tok = MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json"),
                          source_lang="en", target_lang="xx")
    tok.save_pretrained(str(out))

    size = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048) \
        if opus_mt_sized else \
        dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)
    pad = vocab["<pad>"]
    # A larger init spread than the default 0.02 makes the random outputs depend on the input.
    extra = {} if opus_mt_sized else {"init_std": 0.5}
    config = MarianConfig(vocab_size=len(vocab), max_position_embeddings=512, pad_token_id=pad,
                          decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0,
                          scale_embedding=True, share_encoder_decoder_embeddings=True, **size,
                          **extra)
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    if never_stop:  # no end token, and no token that decodes to nothing (<unk>, a bare space)
        with torch.no_grad():
            for piece in ("</s>", "<unk>", "\u2581"):
                if piece in vocab:
                    model.final_logits_bias[0, vocab[piece]] = -1e4
    model.generation_config.bad_words_ids = [[pad]]
    model.generation_config.max_length = 512
    model.generation_config.num_beams = 4  # as OPUS-MT ships: our code must ask for greedy itself
    model.save_pretrained(str(out))
    return out
