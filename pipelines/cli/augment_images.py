"""`duchkit augment-images`: the image views of the dataset as one `augment-images` stage.

    duchkit augment-images --setup AugmentedCenterCrop --views 2 [--save-pixels]

The input may be a stage of the config or one an earlier command wrote into the same output
folder (rebuilt from its manifest, so it is reused, not recomputed). Defaults are the
`AugmentImages` stage's.
"""
from __future__ import annotations

import argparse

from duchkit.pipelines.cli.options import add_pipeline_options, print_stage, run_stage_command


def register(sub) -> None:
    def d(name: str):  # the stage module imports albumentations (and torch): not for --help
        return "(default: the stage's)"

    p = sub.add_parser("augment-images", help="image augmentation views (specs; pixels optional)")
    add_pipeline_options(p)
    p.add_argument("--setup", help="NoAugmentation | AugmentedCenterCrop | AugmentedRandomCrop | "
                   "RandomAugmentation " + d("augmentation"))
    p.add_argument("--views", type=int, help="augmented views per image (+ view 0) " + d("views"))
    p.add_argument("--save-pixels", action="store_true", default=None,
                   help="also store the views as images")
    p.add_argument("--pixel-format", choices=["png", "jpeg"], help=d("pixel_format"))
    p.add_argument("--crop", type=int, help=d("crop"))
    p.add_argument("--blur-sigma", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help=d("blur_sigma"))
    p.add_argument("--rotation", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="rotation degrees range " + d("rotation_degrees"))
    p.add_argument("--jitter-strength", type=float, help=d("jitter_strength"))
    p.add_argument("--name", default="images", help="output stage name (default: images)")
    p.add_argument("--input", default="records")
    p.set_defaults(func=cmd_augment_images)


def cmd_augment_images(args: argparse.Namespace) -> int:
    given = {"augmentation": args.setup, "views": args.views, "save_pixels": args.save_pixels,
             "pixel_format": args.pixel_format, "crop": args.crop,
             "blur_sigma": args.blur_sigma, "rotation_degrees": args.rotation,
             "jitter_strength": args.jitter_strength,
             "on_bad_image": "skip" if args.lenient else None}
    values = {k: v for k, v in given.items() if v is not None}
    return print_stage(args.name, run_stage_command(args, "augment-images", args.name, values,
                                                    args.input, reuse_folder=True))
