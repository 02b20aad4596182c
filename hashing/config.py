"""The trainer's configuration: plain values with the paper's defaults (section IV-C).

Kept free of torch so the command line can build its options without importing it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

REDUCTIONS = ("mean", "sum")
INPUT_NORMS = ("l2", "none")  # how the hashing networks scale their input (hashing.model)
# mAP@K normalisations, defined in hashing.metrics: "standard" (1 / relevant hits in the top K,
# the hashing literature's), "ir" (1 / min(K, R)), "authors" (the authors' variant)
MAP_VARIANTS = ("standard", "ir", "authors")

NOISE_MODES = ("cross-class", "shuffle")
# How much each training pair's inter-modal term counts (hashing.robust): none = every pair 1;
# chnr = a noise detector meta-trained on a clean subset (CHNR); gmm = label-free, a two-component
# mixture over the per-pair code disagreement each epoch; oracle = the true clean mask (a bound);
# ptc = pre-trained on the clean subset, then every pair 1 (CHNR's own baseline)
ROBUST_MODES = ("none", "chnr", "gmm", "oracle", "ptc")
WEIGHT_MODES = ("normal", "exp", "discrete")
# What is trained (hashing.baselines for the two baselines of the paper's Tables IV/V): DUCH, or
# DJSRH (ICCV 2019) / JDSH (SIGIR 2020) on the same features, splits, networks and selection
METHODS = ("duch", "djsrh", "jdsh")
# DUCH's own loss settings (eq. 4-9): a baseline has its own objective and does not read them
DUCH_LOSS_FIELDS = ("alpha", "beta", "gamma", "lambda_image", "lambda_text", "tau", "reduction",
                    "weights_ref_bits")

# Table III: each ablation is a set of weight overrides.
ABLATIONS = {
    "DUCH": {},
    "DUCH-NA": {"alpha": 0.0},
    "DUCH-NQ": {"beta": 0.0},
    "DUCH-NB": {"gamma": 0.0},
    "DUCH-CL": {"lambda_image": 0.0, "lambda_text": 0.0},
    "DUCH-CL-I": {"lambda_text": 0.0},
    "DUCH-CL-T": {"lambda_image": 0.0},
}


@dataclass
class TrainConfig:
    method: str = "duch"  # METHODS; "djsrh" / "jdsh" ignore DUCH's loss settings below
    bits: int = 64
    epochs: int = 100
    batch_size: int = 256
    hidden: int = 4096
    input_norm: str = "l2"  # unit-norm input embeddings ("none": raw), see hashing.model
    # eq. 4 / 9 weights (section IV-C); 0 switches a term off
    alpha: float = 0.01
    beta: float = 0.001
    gamma: float = 0.01
    lambda_image: float = 1.0
    lambda_text: float = 1.0
    tau: float = 1.0
    reduction: str = "mean"  # "sum" = the authors' batch-size-dependent scaling
    # Quantisation and bit balance sum over the K bits of a code, NT-Xent (a cosine) does not,
    # so with constant beta/gamma the binarisation terms weigh 8x more against the contrastive
    # ones at 128 bits than at 16. With weights_ref_bits = R, beta and gamma are the weights at
    # R bits (the paper tuned them at 64: Fig. 4) and scale by R / K at K bits; 0 = constant,
    # the paper's literal reading.
    weights_ref_bits: int = 64
    # optimisers (section IV-C)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    # coupled: Adam's L2 term added to the gradient (the paper's Adam); decoupled: AdamW, the
    # decay applied to the weights directly, so its strength does not depend on how large the
    # (averaged or summed) loss gradients are
    weight_decay_mode: str = "coupled"
    eps: float = 1e-7
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.5, 0.9)
    disc_weight_decay: float = 1e-4
    disc_eps: float = 1e-7
    # lr x lr_decay at epochs 50, 100, ... (never at epoch 0). Section IV-C: "decreased by one
    # fifth every 50 epochs", i.e. x0.8, as the authors' code does; x0.2 (another reading) left
    # UCM mAP@20 lower (64 bits, seed 0, T->I .910 vs .926; 128 bits .906 vs .936)
    lr_decay: float = 0.8
    lr_decay_every: int = 50
    # data
    captions_per_image: int = 0  # 0 = all (a random one per image each epoch); 1 = paper
    val_of_train: float = 0.1
    seed: int = 0
    # evaluation / selection
    map_k: int = 20
    eval_every: int = 1
    # The model kept is the latest evaluated epoch whose validation mAP is within selection_se
    # standard errors (over the validation queries) of the best one: the one-standard-error
    # rule. A validation slice is small (105 UCM images), so late-epoch differences are mostly
    # noise, and the plain best epoch (selection_se = 0) can be a blip half-way through training.
    selection_se: float = 1.0
    # wrong captions (hashing.noise): replace the captions of exactly round(rate x N) training
    # images (validation slice included: it stays as noisy as the archive); for experiments
    noise_rate: float = 0.0
    noise_mode: str = "cross-class"  # cross-class needs labels; shuffle does not
    # robustness to wrong captions (hashing.robust)
    robust: str = "none"
    clean_fraction: float = 0.3  # chnr: share of training images trusted as clean (phase 1)
    meta_epochs: int = 75  # chnr: phase 1 epochs (detector + hashing on the clean subset)
    weight_mode: str = "exp"  # chnr: w, w^3, or 1[w > t]
    detector_lr: float = 1e-4  # chnr: the detector's AdamW learning rate (CHNR's)
    detector_gp: float = 10.0  # chnr: weight of the detector's gradient penalty (CHNR's)
    gmm_warmup: int = 5  # gmm: epochs with every weight 1 before the mixture is fitted
    # execution
    device: str = "cpu"
    compile: bool = False
    amp: bool = False  # bf16 autocast of the networks in training; losses stay fp32
    checkpoint_every: int = 1
    checkpoint_seconds: float = 30.0  # and at least this far apart (0: every checkpoint_every)

    def weights(self):
        from duchkit.hashing.losses import LossWeights

        scale = self.weights_ref_bits / self.bits if self.weights_ref_bits else 1.0
        return LossWeights(self.alpha, self.beta * scale, self.gamma * scale, self.lambda_image,
                           self.lambda_text, self.tau, self.reduction)

    def validate(self) -> "TrainConfig":
        problems = self._type_problems()
        if problems:  # the range checks below assume the types
            raise ValueError("bad training config: " + "; ".join(problems))
        if self.bits not in (8, 16, 24, 32, 48, 64, 96, 128, 256):
            problems.append(f"bits={self.bits} (use 16, 32, 64 or 128)")
        if self.selection_se < 0:
            problems.append(f"selection_se={self.selection_se} (>= 0; 0 = the best epoch)")
        if self.checkpoint_every < 1:
            problems.append(f"checkpoint_every={self.checkpoint_every} (must be >= 1)")
        if not 0 <= self.checkpoint_seconds < float("inf"):
            problems.append(f"checkpoint_seconds={self.checkpoint_seconds} (must be >= 0)")
        if self.epochs < 1 or self.batch_size < 2:
            problems.append("epochs must be >= 1 and batch_size >= 2")
        for name in ("hidden", "eval_every", "map_k", "lr_decay_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        for name in ("lr", "disc_lr"):  # 0 freezes a network: a legitimate control
            if not 0 <= getattr(self, name) < float("inf"):  # also catches NaN
                problems.append(f"{name}={getattr(self, name)} (must be >= 0)")
        for name in ("eps", "disc_eps"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)} (must be > 0)")
        if not 0 < self.lr_decay <= 1:
            problems.append(f"lr_decay={self.lr_decay} (a factor in (0, 1])")
        if min(self.weight_decay, self.disc_weight_decay) < 0:
            problems.append("weight decays must be >= 0")
        if not 0 <= self.noise_rate < 1:
            problems.append(f"noise_rate={self.noise_rate} (a share of the training images in "
                            "[0, 1))")
        if self.weight_decay_mode not in ("coupled", "decoupled"):
            problems.append(f"weight_decay_mode={self.weight_decay_mode!r} (coupled or "
                            "decoupled)")
        if self.noise_mode not in NOISE_MODES:
            problems.append(f"noise_mode={self.noise_mode!r} (one of {NOISE_MODES})")
        if self.robust not in ROBUST_MODES:
            problems.append(f"robust={self.robust!r} (one of {ROBUST_MODES})")
        if self.method not in METHODS:
            problems.append(f"method={self.method!r} (one of {METHODS})")
        elif self.method != "duch":
            problems += self._baseline_problems()
        if self.weight_mode not in WEIGHT_MODES:
            problems.append(f"weight_mode={self.weight_mode!r} (one of {WEIGHT_MODES})")
        if not 0 < self.clean_fraction < 1:
            problems.append(f"clean_fraction={self.clean_fraction} (a share in (0, 1))")
        elif self.robust in ("chnr", "ptc") and self.clean_fraction > 1 - self.noise_rate + 1e-9:
            problems.append(f"clean_fraction={self.clean_fraction} with noise_rate="
                            f"{self.noise_rate}: the clean subset is drawn from the images the "
                            "noise left clean, so clean_fraction <= 1 - noise_rate")
        if not self.detector_lr > 0 or self.detector_gp < 0:
            problems.append("detector_lr must be > 0 and detector_gp >= 0")
        if self.meta_epochs < 1 or self.gmm_warmup < 0:
            problems.append("meta_epochs must be >= 1 and gmm_warmup >= 0")
        if self.reduction not in REDUCTIONS:
            problems.append(f"reduction={self.reduction!r} (one of {REDUCTIONS})")
        if self.input_norm not in INPUT_NORMS:
            problems.append(f"input_norm={self.input_norm!r} (one of {INPUT_NORMS})")
        if self.weights_ref_bits < 0:
            problems.append(f"weights_ref_bits={self.weights_ref_bits} (0 = constant weights, "
                            "or the code length the weights were tuned at)")
        if self.tau <= 0:
            problems.append(f"tau={self.tau} (must be > 0)")
        if self.captions_per_image not in (0, 1):
            problems.append(f"captions_per_image={self.captions_per_image} (0 = all, 1 = paper)")
        if min(self.alpha, self.beta, self.gamma, self.lambda_image, self.lambda_text) < 0:
            problems.append("loss weights must be >= 0")
        if problems:
            raise ValueError("bad training config: " + "; ".join(problems))
        return self

    def _baseline_problems(self) -> list[str]:
        """What a DJSRH or JDSH run cannot honour: robust training (it weighs DUCH's
        inter-modal term) and DUCH's loss settings (an --ablation among them), which the
        baseline's objective does not read; refused rather than silently ignored."""
        problems = []
        if self.robust != "none":
            problems.append(f"robust={self.robust!r} with method={self.method!r}: robust "
                            "training weighs DUCH's inter-modal term, which "
                            f"{self.method} does not have (robust = \"none\")")
        default = TrainConfig()
        changed = [f"{k}={getattr(self, k)!r}" for k in DUCH_LOSS_FIELDS
                   if getattr(self, k) != getattr(default, k)]
        if changed:
            problems.append(f"{', '.join(changed)} with method={self.method!r}: DUCH's loss "
                            f"settings (also what an ablation sets), which {self.method} does "
                            "not use; leave them at their defaults")
        return problems

    def _type_problems(self) -> list[str]:
        """Each field holds its annotated type: "zero" is no seed, "no" no boolean, and a bool
        is no number (a TOML or JSON value reaches here unconverted)."""
        problems = []
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if kind == "bool":
                ok = isinstance(value, bool)
            elif kind == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif kind == "str":
                ok = isinstance(value, str)
            elif kind.startswith("tuple"):
                ok = (isinstance(value, (tuple, list)) and len(value) == 2
                      and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                              for v in value))
            else:
                continue
            if not ok:
                problems.append(f"{f.name}={value!r} (expected {kind})")
        return problems

    def with_ablation(self, name: str) -> "TrainConfig":
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; one of {sorted(ABLATIONS)}")
        return dataclasses.replace(self, **ABLATIONS[name])

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
