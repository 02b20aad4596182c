"""`duchkit train`: DUCH (or DJSRH / JDSH) from embedding stage folders into a run folder.

    duchkit train --images DIR --texts DIR --out RUN [--method duch|djsrh|jdsh] [--bits 64]
                  [--epochs 100] [--seed 0]
                  [--device auto|cpu|cuda] [--ablation DUCH-NA ...] [--resume] ...

Every default is TrainConfig's (duchkit.hashing.config); the work is
duchkit.pipelines.training.train_run's, and the run folder is described in
duchkit.pipelines.run_folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from duchkit.pipelines.cli.options import DEVICES, resolve_device_option
from duchkit.pipelines.stage import ConfigError


def register(sub) -> None:
    from duchkit.hashing.config import (ABLATIONS, INPUT_NORMS, METHODS, NOISE_MODES,
                                        ROBUST_MODES, WEIGHT_MODES, TrainConfig)

    d = TrainConfig()
    p = sub.add_parser("train", help="train DUCH (or a baseline: --method) from embedding "
                       "shards")
    p.add_argument("--method", choices=METHODS, default=d.method,
                   help="duch; or the paper's unsupervised baselines djsrh (ICCV 2019) and jdsh "
                   "(SIGIR 2020) on the same features, splits, networks and optimiser "
                   "(duchkit.hashing.baselines); they use none of DUCH's loss options")
    p.add_argument("--images", type=Path, required=True, help="image embedding stage folder")
    p.add_argument("--texts", type=Path, required=True, help="text embedding stage folder")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--bits", type=int, default=d.bits, choices=[16, 32, 64, 128])
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--hidden", type=int, default=d.hidden, help="hidden width (Table I: 4096)")
    p.add_argument("--input-norm", choices=INPUT_NORMS, default=d.input_norm,
                   help="l2: scale every input embedding to unit norm first (as the authors' "
                   "loader does); none: raw embeddings")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--ablation", choices=sorted(ABLATIONS), default="DUCH",
                   help="Table III configuration (sets the weights below to 0)")
    for name in ("alpha", "beta", "gamma", "lambda_image", "lambda_text", "tau", "lr"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="weight decay of the hashing networks")
    p.add_argument("--weight-decay-mode", choices=["coupled", "decoupled"],
                   default=d.weight_decay_mode,
                   help="coupled: Adam's L2 term (the paper's); decoupled: AdamW")
    p.add_argument("--weights-ref-bits", type=int, default=d.weights_ref_bits,
                   help="beta and gamma are the weights at this code length and scale by it / "
                   "bits (quantisation and bit balance grow with the bits, NT-Xent does not); "
                   "0 = the same beta and gamma at every code length")
    p.add_argument("--loss-reduction", choices=["mean", "sum"], default=d.reduction,
                   help="sum = the authors' batch-size-dependent scaling (comparison only)")
    p.add_argument("--lr-decay", type=float, default=d.lr_decay,
                   help="lr factor every 50 epochs (first at epoch 50; 0.8 = the paper's \"decreased "
                   "by one fifth\")")
    p.add_argument("--captions-per-image", type=int, choices=[0, 1], default=0,
                   help="0: all captions (one random per image each epoch); 1: the paper's "
                   "protocol, one seeded caption per image for training and evaluation")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="validation mAP every N epochs (model selection)")
    p.add_argument("--selection-se", type=float, default=d.selection_se,
                   help="keep the latest epoch whose validation mAP is within this many standard "
                   "errors of the best (the one-standard-error rule); 0 = the best epoch")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="save checkpoint.pt at most every N epochs (and after the last)")
    p.add_argument("--checkpoint-seconds", type=float, default=d.checkpoint_seconds,
                   help="and at least this many seconds apart, so an interruption loses at "
                   "most that much training; 0 = every N epochs (a 4096-wide model's checkpoint "
                   "is ~120 MB, about a second to write)")
    p.add_argument("--k", type=int, default=d.map_k, help="K of mAP@K")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast of the networks in training (CUDA, or a CPU with bf16 units)")
    g = p.add_argument_group("wrong captions (noise) and robust training")
    g.add_argument("--noise-rate", type=float, default=d.noise_rate,
                   help="replace the captions of exactly round(rate x N) training images "
                   "(an experiment; query and retrieval stay clean)")
    g.add_argument("--noise-mode", choices=NOISE_MODES, default=d.noise_mode,
                   help="cross-class: captions of an image of another class (needs labels); "
                   "shuffle: captions permuted among the chosen images (no labels)")
    g.add_argument("--robust", choices=ROBUST_MODES, default=d.robust,
                   help="weigh each pair's inter-modal term by trust: chnr (a noise detector "
                   "meta-trained on a clean subset), gmm (label-free), oracle (the true mask)")
    g.add_argument("--clean-fraction", type=float, default=d.clean_fraction,
                   help="chnr: share of training images trusted as clean in phase 1")
    g.add_argument("--weight-mode", choices=WEIGHT_MODES, default=d.weight_mode,
                   help="chnr: normal w, exp w^3, discrete 1[w > t]")
    g.add_argument("--detector-lr", type=float, default=d.detector_lr,
                   help="chnr: the noise detector's learning rate (CHNR's 1e-4)")
    g.add_argument("--detector-gp", type=float, default=d.detector_gp,
                   help="chnr: weight of the detector's gradient penalty (CHNR's 10; 0 = none)")
    g.add_argument("--meta-epochs", type=int, default=d.meta_epochs,
                   help="chnr: phase 1 epochs before the --epochs of phase 2")
    g.add_argument("--gmm-warmup", type=int, default=d.gmm_warmup,
                   help="gmm: epochs with every weight 1 before the mixture is fitted")
    p.add_argument("--tune", type=float, default=0.0, metavar="SECONDS",
                   help="first choose lr, weight decay (and its coupling), loss reduction, "
                   "temperature and epochs on the validation slice with Optuna, within this "
                   "time budget (trials in RUN/tune.json); 0 = no tuning")
    p.add_argument("--tune-trials", type=int, default=None,
                   help="at most this many tuning trials (with --tune 0: exactly this many)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)
    p.set_defaults(func=cmd_train)


def train_config(args: argparse.Namespace):
    """The TrainConfig of the options, validated."""
    from duchkit.hashing.config import TrainConfig

    device = resolve_device_option(args.device, "train")
    cfg = TrainConfig(method=args.method, bits=args.bits, epochs=args.epochs, batch_size=args.batch_size,
                      hidden=args.hidden, input_norm=args.input_norm, seed=args.seed,
                      device=device, alpha=args.alpha,
                      beta=args.beta, gamma=args.gamma, lambda_image=args.lambda_image,
                      lambda_text=args.lambda_text, tau=args.tau, lr=args.lr,
                      reduction=args.loss_reduction, lr_decay=args.lr_decay,
                      weights_ref_bits=args.weights_ref_bits, weight_decay=args.weight_decay,
                      weight_decay_mode=args.weight_decay_mode,
                      captions_per_image=args.captions_per_image, eval_every=args.eval_every,
                      map_k=args.k, compile=args.compile, amp=args.amp,
                      checkpoint_every=args.checkpoint_every,
                      checkpoint_seconds=args.checkpoint_seconds, selection_se=args.selection_se,
                      noise_rate=args.noise_rate, noise_mode=args.noise_mode,
                      robust=args.robust, clean_fraction=args.clean_fraction,
                      weight_mode=args.weight_mode, meta_epochs=args.meta_epochs,
                      detector_lr=args.detector_lr, detector_gp=args.detector_gp,
                      gmm_warmup=args.gmm_warmup)
    cfg = cfg.with_ablation(args.ablation)
    try:
        return cfg.validate()
    except ValueError as exc:
        raise ConfigError(f"duchkit train: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from duchkit.pipelines.runner import setup_logging
    from duchkit.pipelines.training import train_run
    from duchkit.pipelines.training_data import load_archive

    cfg = train_config(args)
    try:
        archive = load_archive(args.images, args.texts)
    except ValueError as exc:
        raise ConfigError(f"duchkit train: {exc}") from None
    for w in archive.warnings:
        print(f"warning: {w}")
    setup_logging(args.out)
    if args.tune < 0 or (args.tune_trials is not None and args.tune_trials < 1):
        raise ConfigError("duchkit train: --tune must be >= 0 seconds and --tune-trials >= 1")
    train_run(archive, cfg, args.out, args.resume, (lambda s: None) if args.quiet else print,
              args.tune, args.tune_trials)
    return 0


