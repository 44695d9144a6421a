"""The sections of a run's configuration: one frozen dataclass each, with its defaults, and
the constants their values are chosen from (precisions, memory formats, class groups)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataConfig:
    name: str = "elpv"  # a built-in (see `lvmlt datasets`), "splitfile" or "imagefolder"
    root: str | None = None  # image root for splitfile/imagefolder, pickle folder for cifar
    train_split: str | None = None  # split files ("relative/path label" per line), splitfile only
    val_split: str | None = None  # optional: else carved out of the training pool
    test_split: str | None = None
    class_names: str | None = None  # splitfile only: a text file, one class name per line in label order
    num_classes: int | None = None  # C, when known: a label outside 0..C-1 is an error
    imbalance_factor: float = 100.0  # for *-lt built-ins: n_max / n_min
    val_fraction: float = 0.1  # share of the training pool held out for validation
    split_seed: int = 0  # seeds the LT subsample and the train/val/test split
    image_size: int = 64  # images are resized to image_size x image_size for the backbone
    sampler: str = "instance"  # instance | class_balanced | sqrt
    batch_size: int = 64
    num_workers: int = -1  # DataLoader workers; -1 = automatic (0 on small CPUs, more on CUDA)
    skip_bad_images: bool = False  # skip and count unreadable images instead of stopping
    augment: bool = True  # random crop + flip on the training split
    # The strong recipe's augmentation (docs/choosing.md): an automatic policy on top of crop + flip
    # (torchvision's TrivialAugmentWide or RandAugment), the dihedral group (90-degree rotations and
    # flips) where the classes are invariant to it (auto: the dataset says so, e.g. ELPV), and
    # mixup / cutmix (timm's Mixup; a Beta(alpha, alpha) mix per batch, 0 = off).
    policy: str = "none"  # none | trivialaugment | randaugment
    dihedral: str = "never"  # never | auto (where the dataset declares it, e.g. ELPV) | always
    mixup: float = 0.0  # mixup's alpha
    cutmix: float = 0.0  # cutmix's alpha
    mix_prob: float = 1.0  # share of the batches that are mixed (when mixup or cutmix is on)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet32"  # resnet32 (CIFAR-style) | resnet18 | resnet34 | resnet50
    pretrained: bool = False  # timm ResNets only; needs the weights in the local cache
    dropout: float = 0.0  # before the classifier (the paper uses 0.5)
    cosine_head: bool = False  # normalised classifier (use with LDAM)


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"  # ce | balanced_softmax | logit_adjusted | ldam_drw | focal | class_balanced
    tau: float = 1.0  # logit adjustment strength
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    drw_epoch: int = -1  # epoch at which deferred re-weighting starts; -1 = 80% of epochs
    drw_beta: float = 0.9999  # effective-number beta for DRW weights
    focal_gamma: float = 2.0
    cb_beta: float = 0.9999  # effective-number beta for the class-balanced loss
    cb_base: str = "ce"  # ce | focal: the loss the class-balanced weights apply to
    label_smoothing: float = 0.0  # ce, balanced_softmax and logit_adjusted only


#: Compute precisions of training (``optim.precision``) and extraction (``precision``).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Training's memory layouts (``optim.memory_format``; ``auto``: lvmlt.training.layout on one CPU process).
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd | adamw (the registry of training/optim.py)
    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | step
    milestones: tuple[int, ...] = (160, 180)  # step schedule only
    gamma: float = 0.1  # step schedule only
    warmup_epochs: int = 0
    accumulate: int = 1  # gradient accumulation steps
    precision: str = "auto"  # auto (bf16 where native, else fp32) | fp32 | bf16 | fp16 (CUDA only)
    memory_format: str = "auto"  # auto (CPU: the faster, measured once per model shape: training/layout.py) | channels_last | contiguous
    max_steps_per_epoch: int = 0  # 0 = whole epoch; >0 caps it (smoke tests)
    # An exponential moving average of the weights (timm's ModelEmaV3), decay per optimiser step;
    # 0 = off. When on, validation, the best checkpoint and everything after score the average.
    ema: float = 0.0
    # Weight balancing (Alshammari et al., CVPR 2022): after every step each class's classifier
    # weight vector is projected back into the ball of this L2 norm (MaxNorm); 0 = off.
    max_norm: float = 0.0


# The default class groups (by training images per class): many > MANY_THRESHOLD,
# few < FEW_THRESHOLD, medium in between; a dataset may suggest its own (bundle.meta).
MANY_THRESHOLD = 100
FEW_THRESHOLD = 20


def class_group(n: float, many: int | None = None, few: int | None = None) -> str:
    """"many" (more than ``many`` training images), "few" (fewer than ``few``) or "medium";
    None = the default threshold. The one rule behind every group lvmlt reports."""
    many = MANY_THRESHOLD if many is None else many
    few = FEW_THRESHOLD if few is None else few
    return "many" if n > many else "few" if n < few else "medium"


@dataclass(frozen=True)
class EvalConfig:
    # Groups by training images per class: many > many_threshold, few < few_threshold,
    # medium in between. None = the dataset's own default (MANY_THRESHOLD / FEW_THRESHOLD
    # for most; see datasets).
    many_threshold: int | None = None
    few_threshold: int | None = None
    ece_bins: int = 15


@dataclass(frozen=True)
class FusionConfig:
    """Which frozen SAM features enter the model (section III.A of the paper): the settings of
    ``system=cnn``'s fusion and of the probes (``sam_norm``); ``store`` serves every system."""

    store: str | None = None  # feature store directory made by `lvmlt extract`
    map: bool = False  # SAM map feature fused into a backbone stage (eq. 1-2)
    map_stage: int = -1  # index into the backbone's stages (-1 = last)
    latent: bool = False  # SAM latent vector fused before the classifier (eq. 3)
    alpha: float = 0.5  # logits = (1 - alpha) z_SAM + alpha z_CNN
    latent_dim: int = 256  # token width of the self-attention block
    heads: int = 4
    # system=sam_probe / synthetic_probe: what v_SAM passes before the FC: batchnorm (parameter-free,
    # the paper's probe), or a fixed map fitted on the training split: cl2n (centre, then L2) | l2 | standardize | raw
    sam_norm: str = "batchnorm"
    # Beyond the paper (docs/methods.md, "A fused model never worse than its parts"). With latent:
    # aux_weight > 0 adds the run's loss on z_CNN and on z_SAM alone (dual supervision), times this;
    # alpha_select: fixed (alpha as given) | val (after training, alpha on a grid chosen on validation)
    aux_weight: float = 0.0
    alpha_select: str = "fixed"


@dataclass(frozen=True)
class ProtoConfig:
    """The prototype-based loss (section III.B): total = baseline + beta * L_proto."""

    enabled: bool = False
    beta: float = 1e-3  # 1e-4 (ImageNet-LT) or 1e-3 (iNaturalist) in the paper
    bank_size: int = 64  # M features per class in the FIFO memory bank
    head: bool = True
    tail_std: bool = True
    tail_dist: bool = True
    tau_head: float = 0.5  # L_head on classes with w < tau_head
    tau_tail_std: float = 0.5  # L_tail-std on classes with w > tau_tail_std
    tau_tail_dist: float = 0.5  # L_tail-dist on classes with w > tau_tail_dist
    weights: str = "inverse_frequency"  # how w_k in [0, 1] is made from class counts
    eps: float = 1e-6  # guards log(0) in L_tail-dist


@dataclass(frozen=True)
class ProCoConfig:
    """ProCo's contrastive term (Du et al., TPAMI 2024). The full ProCo recipe is
    ``loss.name=logit_adjusted proco.enabled=true``: LA-CE on the classifier plus this term."""

    enabled: bool = False
    weight: float = 1.0  # alpha, the contrastive term's weight
    feat_dim: int = 128  # p, the projection's output size
    hidden: int = 512  # the projection MLP's hidden width
    temperature: float = 0.1
    la_tau: float = 1.0  # logit adjustment inside the contrastive loss
    bessel: str = "debye"  # debye | miller


@dataclass(frozen=True)
class StageConfig:
    """Second-stage (decoupled) training on a finished run's representation (Kang et al. 2020).

    cRT: ``stage.init_from=RUN_DIR stage.freeze_backbone=true stage.reset_head=true
    data.sampler=class_balanced``; LWS: the same with ``stage.lws=true`` and without
    ``reset_head``. tau-normalisation and post-hoc logit adjustment need no training:
    see ``lvmlt calibrate``."""

    init_from: str | None = None  # a run directory (its best checkpoint) or a .pt file
    freeze_backbone: bool = False  # train only the classifier (and fusion heads)
    reset_head: bool = False  # re-initialise the classifier before training
    lws: bool = False  # learn only one scale per class on the frozen classifier

    @property
    def active(self) -> bool:
        """A second stage is asked for."""
        return bool(self.init_from or self.freeze_backbone or self.reset_head or self.lws)


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic tail features in the frozen encoder's latent space + a linear classifier.

    Sharma 2025 gives no sampling recipe; every default here is [ours]
    (docs/methods-other.md, "Synthetic tail features in the latent space").
    ``system=synthetic_probe``: the training split of a linear probe on stored v_SAM
    gets the synthetic features, sampled after the probe's normalisation
    (``fusion.sam_norm``, cl2n in the recipe); the head is trained by the trainer
    (``optim.*``, ``loss.*`` on the real + synthetic counts).
    """

    distribution: str = "gaussian"  # gaussian (shrunk covariance) | vmf (needs cl2n or l2)
    shrinkage: float = -1.0  # covariance shrinkage towards (tr S / d) I in [0, 1]; -1 = Ledoit-Wolf
    n_min: int = 50  # classes with fewer real samples borrow head-class statistics
    borrow_k: int = 3  # ... from the k head classes whose means are closest in cosine
    borrow_rescale: bool = False  # rescale the borrowed covariance to the class's own spread
    eps: float = 1e-4  # added to the diagonal of a borrowed covariance
    target: int = 0  # samples per class after the top-up; 0 = the largest class's count
    renormalize: bool = True  # put Gaussian samples back on the unit sphere (normalised features)


@dataclass(frozen=True)
class SciLTConfig:
    """SciLT-style multi-level fusion with dual supervision (Chen & Su 2026).

    Only the abstract is public: the fusion form, heads, loss weights and schedule are
    [ours] (docs/methods-other.md, "SciLT"). Levels are pooled encoder stages from the
    feature store (``fusion.store``). ``system=scilt``: the model is the fusion head (models/scilt.py), its per-level
    heads trained with ``loss.*`` times ``aux_weight`` (losses/scilt.py), by the trainer.
    """

    levels: tuple[str, ...] = ("stage3", "stage4")  # penultimate first; "vec" = v_SAM (the neck)
    gate: str = "sample"  # sample (one weight per level and image) | channel | fixed (uniform average)
    dim: int = 0  # common width the levels are projected to; 0 = none (the levels' widths must match)
    head: str = "cosine"  # cosine (logits / temperature) | linear
    temperature: float = 0.07
    aux_weight: float = 0.5  # beta: weight of each per-level head's loss (0 = fused head only)
    inference: str = "fused"  # fused | mean (of the fused and per-level heads' logits)
    lora_rank: int = 8  # PEFT option: LoRA on the TinyViT attention projections
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("qkv", "proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """``system=sam_finetune``: the SAM encoder trained on images at ``data.image_size``
    (a multiple of 64); its last ``stages`` stages, neck and a linear head train."""

    encoder: str = "mobilesam"  # a TinyViT SAM encoder with SAM's pixel normalisation
    stages: int = 1  # last stages trained (1 .. 4 for MobileSAM; 4 = full fine-tuning)
    engine: str = "auto"  # the frozen stages on the CPU: auto | openvino | onnxruntime | torch
    # linear: a head on the pooled neck output; scilt: SciLT end to end, its fusion of the pooled
    # penultimate and final stages with a head on each and on the fusion (scilt.gate, .dim, .head,
    # .temperature, .aux_weight apply)
    head: str = "linear"
    checkpoint: str | None = None  # encoder weights; None = the cached official ones


@dataclass(frozen=True)
class IFLConfig:
    """IFL (Tang et al., ECCV 2022) as a loss term under any ``loss.name``: environments
    from the model's own predictions, a centre loss shared by both (docs/methods-other.md,
    "IFL as a loss term")."""

    enabled: bool = False
    warmup_epochs: int = -1  # IFL off before this epoch; -1 = 60 % of optim.epochs
    step_epoch: int = -1  # the second weight from this epoch; -1 = 80 % of optim.epochs
    weights: tuple[float, ...] = (1e-3, 5e-3)  # alpha_e from warmup_epochs, then from step_epoch
    center_lr: float = 0.5  # the centres' own SGD step, independent of alpha_e (as in the code)
    center_init: str = "class_mean"  # class_mean (at the end of warm-up) [ours] | random (the code)
    env_scale: float = 4.0  # target top-20 % / bottom-80 % weight ratio inside a class
    min_class_scores: int = 5  # classes with fewer scored images get uniform env-2 weights
    env2_cls: bool = True  # also apply the baseline loss to environment 2, as the authors do
    irm_weight: float = 0.0  # IRMv1 penalty per environment; 0 = off, as in the authors' IFL


@dataclass(frozen=True)
class Config:
    system: str = "cnn"  # what is trained: cnn | sam_probe | synthetic_probe | scilt | sam_finetune (lvmlt/systems.py)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    proto: ProtoConfig = field(default_factory=ProtoConfig)
    proco: ProCoConfig = field(default_factory=ProCoConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    scilt: SciLTConfig = field(default_factory=SciLTConfig)
    ifl: IFLConfig = field(default_factory=IFLConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    out_dir: str = "runs"
    run_name: str = ""  # default: <dataset>-<loss>-seed<seed>
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
