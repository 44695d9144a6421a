"""An exported bundle (``lvmlt export``) as a model for :mod:`lvmlt.deploy.predictor`, without torch.

A bundle is one directory::

    manifest.json        format, lvmlt version, and the size and sha256 of every file below
    model.json           the run's description (inputs, classes, counts, thresholds, image
                         size, feature settings, calibration): see lvmlt.training.describe
    classes.json         the class names, in output order
    classifier.onnx      inputs by model.json["inputs"] -> "logits" (B x C), batch dimension free
    encoder.onnx         (when the model reads SAM features) "image" 1 x 3 x S x S -> "out"
                         1 x 256 x h x w (and one output per stored level)
    pca_mean.npy, pca_component.npy      the global PCA basis of the map feature
    norm.<key>.mean.npy / .std.npy       feature normalisations fitted on the training split
    val_logits.npy, val_labels.npy       the validation predictions adaptation starts from

Every file is checked against the manifest when the bundle opens: a changed byte or a
missing file is one line naming it. ``.npy`` files are read with ``allow_pickle=False``:
nothing in a bundle is unpickled. The graphs run through ONNX Runtime, or OpenVINO where
it is installed (it reads ONNX directly).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lvmlt import inputs
from lvmlt.errors import UserError
from lvmlt.rundir import DESCRIPTION_FORMAT, file_sha256

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1
ENCODER, CLASSIFIER = "encoder.onnx", "classifier.onnx"
ENGINES = ("auto", "onnxruntime", "openvino")


def onnx_name(key: str) -> str:
    """The graph input name of a model input (``level/stage3`` -> ``level_stage3``)."""
    return key.replace("/", "_")


def npy_name(key: str) -> str:
    """The bundle file of a ``model.npz`` array (``norm.level__stage3.mean`` -> ``....npy``)."""
    return f"{key}.npy"


def not_a_bundle(root: Path) -> str | None:
    """Why ``root`` is not a folder lvmlt wrote as a bundle (None when it is one): its manifest
    must be lvmlt's, of a known format, and list every other entry of the folder. What
    ``--overwrite`` may delete is decided by this, never by the manifest's name alone."""
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"has no readable {MANIFEST} ({type(e).__name__})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != BUNDLE_FORMAT or "system" not in manifest:
        return f"has a {MANIFEST} that is not an lvmlt bundle manifest of format {BUNDLE_FORMAT}"
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name != MANIFEST and (entry.name not in files or not entry.is_file() or entry.is_symlink()):
            return f"holds {entry.name}, which its manifest does not list"
    return None


def verify(root: Path) -> dict:
    """The manifest, after checking that every file it lists is present and unchanged."""
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__})", fix="export the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{path} is not an lvmlt bundle manifest of format {BUNDLE_FORMAT}",
                        fix="export the bundle again with this lvmlt")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(r, dict) and {"bytes", "sha256"} <= set(r)
                                              for r in files.values()):
        raise UserError(f"{path} does not list the bundle's files as lvmlt writes them", fix="export the bundle again")
    unlisted = sorted(p.name for p in root.iterdir() if p.name != MANIFEST and p.name not in files)
    if unlisted:
        raise UserError(f"bundle {root} holds {unlisted[0]}, which its manifest does not list"
                        + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""),
                        fix="remove what was added to the bundle folder, or export it again")
    for name, rec in files.items():
        f = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise UserError(f"{path} lists a file outside the bundle ({name})", fix="export the bundle again")
        if not f.is_file():
            raise UserError(f"bundle {root} lacks {name}", fix="copy the whole bundle directory, or export it again")
        if f.stat().st_size != rec["bytes"] or file_sha256(f) != rec["sha256"]:
            raise UserError(f"bundle file {f} is damaged (its sha256 differs from the manifest)",
                            fix="copy the bundle again, or export it again")
    return manifest


def _load_npy(root: Path, name: str) -> np.ndarray:
    return np.load(root / name, allow_pickle=False)


def openvino_precision(precision: str) -> str:
    """``auto``: bf16 where OpenVINO reports native bfloat16 on this CPU (AMX, AVX512-BF16), else f32."""
    if precision != "auto":
        return {"fp32": "f32", "bf16": "bf16"}[precision]
    import openvino as ov

    return "bf16" if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


def _openvino_request(core, path: Path, config: dict, probe: bool):
    """(compiled model, infer request) of the graph at ``path``; with ``probe``, one inference
    on zeros first (a bf16 graph can compile and still fail at its first inference)."""
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    if probe and config["INFERENCE_PRECISION_HINT"] != "f32":
        request.infer({
            port: np.zeros([d.get_length() if d.is_static else 1 for d in port.get_partial_shape()], np.float32)
            for port in compiled.inputs
        })  # fmt: skip
    return compiled, request


def _session(path: Path, engine: str, threads: int, precision: str = "fp32"):
    """``run(feeds: {name: array}) -> [outputs]`` of one graph, through ``engine``."""
    if engine == "openvino":
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": openvino_precision(precision), "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            compiled, request = _openvino_request(core, path, config, probe=precision == "auto")
        except RuntimeError:
            # auto chose bf16 from the CPU's flags, but the kernels at hand lack it (oneDNN held
            # to an older instruction set, ONEDNN_MAX_CPU_ISA): float32 always runs
            if precision != "auto" or config["INFERENCE_PRECISION_HINT"] == "f32":
                raise
            config["INFERENCE_PRECISION_HINT"] = "f32"
            compiled, request = _openvino_request(core, path, config, probe=False)

        def run(feeds):
            res = request.infer(feeds)
            return [np.array(res[o], copy=True) for o in compiled.outputs]

        return run
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def choose_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise UserError(f"unknown bundle engine {engine!r}", fix=f"choose one of: {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "onnxruntime"
    return "openvino"


#: The largest input sides a bundle may declare (the CNN's image, the encoder's input): beyond
#: them one image alone needs gigabytes, and a damaged or crafted model.json says so.
MAX_IMAGE_SIDE, MAX_ENCODER_SIDE = 4096, 4096


def check_spec(root: Path, spec, classes) -> None:
    """``model.json`` and ``classes.json`` as lvmlt writes them, else one line naming the file and
    key: the description format this lvmlt reads, the keys every reader uses with their types,
    sizes within :data:`MAX_IMAGE_SIDE`, one class name per training count."""
    where = root / "model.json"

    def bad(what: str, fix: str = "export the bundle again with this lvmlt"):
        raise UserError(f"{where}: {what}", fix=fix)

    if not isinstance(spec, dict):
        bad("is not a JSON object")
    if spec.get("format") != DESCRIPTION_FORMAT:
        bad(f"has description format {spec.get('format')!r}; this lvmlt reads format {DESCRIPTION_FORMAT}",
            fix="use the lvmlt version that exported it, or export it again")
    kinds = {"system": str, "inputs": list, "train_counts": list, "thresholds": dict}
    for key, kind in kinds.items():
        if not isinstance(spec.get(key), kind):
            bad(f"key {key!r} is missing or not a {kind.__name__}")
    if not set(spec["inputs"]) <= set(inputs.INPUT_KEYS) | {k for k in spec["inputs"] if str(k).startswith("level/")}:
        bad(f"inputs {spec['inputs']} name an input lvmlt does not know")
    th = spec["thresholds"]
    if not all(isinstance(th.get(k), int) for k in ("many", "few")):
        bad("thresholds must hold integer 'many' and 'few'")
    if not all(isinstance(n, int) and n >= 0 for n in spec["train_counts"]):
        bad("train_counts must be counts (integers >= 0)")
    if inputs.IMAGE in spec["inputs"]:
        side = (spec.get("image") or {}).get("size") if isinstance(spec.get("image"), dict) else None
        if not isinstance(side, int) or not 8 <= side <= MAX_IMAGE_SIDE:
            bad(f"image.size {side!r} must be an integer from 8 to {MAX_IMAGE_SIDE}")
    if inputs.sam_keys(set(spec["inputs"])):
        f = spec.get("features")
        side = f.get("img_size") if isinstance(f, dict) else None
        if not isinstance(side, int) or not 16 <= side <= MAX_ENCODER_SIDE:
            bad(f"features.img_size {side!r} must be an integer from 16 to {MAX_ENCODER_SIDE}")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        raise UserError(f"{root / 'classes.json'}: must be a list of distinct class names",
                        fix="export the bundle again")
    if len(classes) != len(spec["train_counts"]):
        raise UserError(f"{root / 'classes.json'}: {len(classes)} class names for {len(spec['train_counts'])} "
                        "classes in model.json", fix="export the bundle again")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read as JSON ({type(e).__name__})", fix="export the bundle again") from None


class BundleModel:
    """An exported bundle, opened and checked; see the module docstring for its files.

    Args:
        root: the bundle directory.
        engine: auto (OpenVINO where installed, else ONNX Runtime) | onnxruntime | openvino.
        threads: inference threads (0 = the engine's default).
        precision: OpenVINO's: auto (bf16 where native, as ``lvmlt extract`` runs the encoder;
            features within a cosine of about 0.9999 of float32) | fp32 | bf16. ONNX Runtime
            runs float32.
    """

    def __init__(self, root, engine: str = "auto", threads: int = 0, log=None, precision: str = "auto"):
        self.root = Path(root)
        self.log = log or (lambda s: print(s, file=sys.stderr))
        self.manifest = verify(self.root)
        self.spec = _read_json(self.root / "model.json")
        classes = _read_json(self.root / "classes.json")
        check_spec(self.root, self.spec, classes)
        self.spec["classes"] = classes
        self.needs = set(self.spec["inputs"])
        self.sam_keys = inputs.sam_keys(self.needs)
        self.engine = choose_engine(engine)
        files = self.manifest["files"]
        f = self.spec.get("features") or {}
        self.sam_norm = f.get("input_norm", "sam")
        self.pca = None
        if npy_name("pca_mean") in files:
            self.pca = (_load_npy(self.root, npy_name("pca_mean")), _load_npy(self.root, npy_name("pca_component")))
        self.norms = {}
        for key, kind in f.get("norms", {}).items():
            arrays = [npy_name(f"norm.{key.replace('/', '__')}.{p}") for p in ("mean", "std")]
            mean, std = (_load_npy(self.root, a) if a in files else None for a in arrays)
            self.norms[key] = inputs.FeatureNorm(kind, mean, std)
        self.val_logits = _load_npy(self.root, npy_name("val_logits"))
        self.val_labels = _load_npy(self.root, npy_name("val_labels"))
        if precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"unknown bundle precision {precision!r}", fix="choose auto, fp32 or bf16")
        self._classifier = _session(self.root / CLASSIFIER, self.engine, threads, precision)
        self._encoder = _session(self.root / ENCODER, self.engine, threads, precision) if self.sam_keys else None
        self.outputs = ["out", *f.get("levels", [])]
        self.log(f"bundle {self.root}: {self.spec['system']}, {len(self.spec['classes'])} classes, engine {self.engine}")

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self._encoder({"image": np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.outputs, outs, strict=True))

    def classify(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {onnx_name(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in batch.items()}
        return self._classifier(feeds)[0]
