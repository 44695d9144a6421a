"""Settings of one feature extraction (``lvmlt extract``)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from lvmlt.config import PRECISIONS
from lvmlt.errors import UserError

#: The extraction engines (``engine``); :func:`lvmlt.features.engines.choose_engine` picks one.
ENGINES = ("auto", "torch", "openvino", "onnxruntime")


def _choose(values) -> str:
    return f"choose {', '.join(values[:-1])} or {values[-1]}"


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract and how fast; validated on construction.

    The first group decides the stored values and is part of the store's provenance; the
    second only decides speed and robustness (changing it never invalidates a store).
    """

    # --- what is stored (provenance: a mismatch with a store is an error) ---
    encoder: str = "mobilesam"  # mobilesam | litemedsam | sam_vit_b | sam_vit_l | sam_vit_h
    checkpoint: str | None = None  # None = cached official weights; required for sam_vit_*
    img_size: int = 0  # encoder input side; 0 = native (1024, LiteMedSAM 256)
    precision: str = "auto"  # auto (bf16 where native, else fp32) | fp32 | bf16 | fp16 (CUDA): compute dtype
    dtype: str = "float16"  # float16 | float32: the stored arrays
    pca: str = "global"  # global: one train-fitted basis | per_image: each image its own
    pca_images: int = 64  # train images whose spatial vectors (all cells) fit the global basis
    pca_seed: int = 0  # picks those images
    map_size: int = 0  # side of the stored F_PCA map; 0 = the encoder grid (64 at 1024)
    crop_padding: bool = True  # pool / map only the cells covering the image, not SAM's padding
    levels: tuple[str, ...] = ()  # earlier stages to store pooled (e.g. stage2, stage3)

    # --- how (speed and robustness only) ---
    batch_size: int = 0  # images per encoder call; 0 = auto: what the engine runs at once (OpenVINO's streams), else 1
    chunk_size: int = 128  # samples per atomically written chunk (the unit of resume)
    channels_last: bool = True
    engine: str = "auto"  # auto | torch | openvino | onnxruntime (auto: OpenVINO on the CPU, torch on CUDA)
    compile: bool = False  # torch.compile the encoder (engine=torch; minutes to compile, then faster)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    workers: int = 1  # image-decoding threads running ahead of the encoder
    device: str = "auto"  # auto | cpu | cuda
    skip_bad_images: bool = False  # store zeros for unreadable images and list them

    def __post_init__(self):
        def bad(key, fix):
            raise UserError(f"extract setting {key}={getattr(self, key)!r} is invalid", fix=fix)

        if self.precision not in PRECISIONS:
            bad("precision", _choose(PRECISIONS))
        if self.engine not in ENGINES:
            bad("engine", _choose(ENGINES))
        if self.dtype not in ("float16", "float32"):
            bad("dtype", "choose float16 or float32")
        if self.pca not in ("global", "per_image"):
            bad("pca", "choose global or per_image")
        if self.pca_images < 1:
            bad("pca_images", "use at least 1 image")
        for key in ("img_size", "map_size", "threads"):
            if getattr(self, key) < 0:
                bad(key, "use 0 (default) or a positive number")
        if self.batch_size < 0:
            bad("batch_size", "use 0 (automatic) or a positive number")
        if self.chunk_size < 1:
            bad("chunk_size", "use a positive number")
        if self.workers < 0:
            bad("workers", "use 0 (decode in the main thread) or more")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            bad("device", "choose auto, cpu or cuda")
        if isinstance(self.levels, str | list):
            object.__setattr__(
                self, "levels", tuple([self.levels] if isinstance(self.levels, str) else self.levels)
            )


def extract_precision(cfg: ExtractConfig, device) -> str:
    """The precision an extraction with ``cfg`` computes in on ``device``.

    ``auto`` is the encoder's choice (float32 for one registered ``bf16_ok=False``, else
    bfloat16 where it is native); explicit values are checked (fp16 needs CUDA, emulated
    bf16 warns once).
    """
    if cfg.precision == "auto":
        from lvmlt.encoders.base import auto_precision

        return auto_precision(cfg.encoder, device)
    from lvmlt.hardware import resolve_precision

    return resolve_precision(cfg.precision, device, "extract precision")


# Fields that change stored values: they are compared when a store is checked or resumed.
PROVENANCE_FIELDS = (
    "encoder",
    "img_size",
    "precision",
    "dtype",
    "pca",
    "pca_images",
    "pca_seed",
    "map_size",
    "crop_padding",
    "levels",
)
SPEED_FIELDS = tuple(
    f.name for f in fields(ExtractConfig) if f.name not in PROVENANCE_FIELDS + ("checkpoint",)
)
