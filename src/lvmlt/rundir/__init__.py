"""The run directory, and the one way lvmlt writes a file durably.

A run directory (``out_dir/run_name``) holds::

    config.yaml              the resolved config, git commit, seed and data fingerprints
    train.log                the log of every epoch
    tb/                      TensorBoard events
    history.jsonl            one line per finished epoch
    checkpoints/last.pt      the state after the last finished epoch (for --resume)
    checkpoints/best.pt      the epoch with the best *validation* score
    metrics.json             final metrics; other commands add their own keys (calibrated)
    predictions.npz          validation and test logits and labels, train class counts
    model.json, model.npz    what rebuilds the model and its inputs without the training data
                             (classes, inputs, preprocessing, feature settings, PCA basis)
    bad_images.txt           ids of skipped (unreadable) images, when there were any
    .lock                    the one-writer lock (lvmlt.locks): who trains or evaluates it now

Three modules, all read through this package (``from lvmlt import rundir``; ``rundir.X``):

* :mod:`lvmlt.rundir.durable`: atomic, fsync-ed writes (:func:`atomic_write`,
  :func:`writing`) and :class:`WriteError`, the one line an operating-system fault
  becomes, naming the file and the errno's words (the file's previous version stays);
* :mod:`lvmlt.rundir.files`: the names of a run's files and how each is read and written
  (config, history, metrics, predictions, the model description);
* :mod:`lvmlt.rundir.checkpoints`: checkpoints of tensors and plain values only, read with
  ``torch.load(weights_only=True)`` and checked against their content sha256.

This package sits at the bottom of lvmlt: it imports nothing of lvmlt but the errors (and,
to explain a checkpoint torch refuses, :mod:`lvmlt.safepickle`).
"""

from lvmlt.rundir.checkpoints import content_sha256, load_checkpoint, save_checkpoint
from lvmlt.rundir.durable import (
    WriteError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    fsync_dir,
    os_error_in,
    tmp_name,
    writing,
)
from lvmlt.rundir.files import (
    BAD_IMAGES,
    BEST,
    CHECKPOINTS,
    CONFIG,
    DESCRIPTION,
    DESCRIPTION_ARRAYS,
    DESCRIPTION_FORMAT,
    HISTORY,
    LAST,
    METRICS,
    PREDICTIONS,
    REEVALUATE,
    TENSORBOARD,
    TRAIN_LOG,
    append_history,
    is_run_dir,
    read_config,
    read_description,
    read_history,
    read_metrics,
    read_predictions,
    saved_config,
    without_matrices,
    write_config,
    write_description,
    write_metrics,
    write_predictions,
)

__all__ = [
    "BAD_IMAGES", "BEST", "CHECKPOINTS", "CONFIG", "DESCRIPTION", "DESCRIPTION_ARRAYS", "DESCRIPTION_FORMAT",
    "HISTORY", "LAST", "METRICS", "PREDICTIONS", "REEVALUATE", "TENSORBOARD", "TRAIN_LOG",
    "WriteError", "append_history", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
    "content_sha256", "file_sha256", "fsync_dir", "is_run_dir", "load_checkpoint", "os_error_in",
    "read_config", "read_description", "read_history", "read_metrics", "read_predictions", "save_checkpoint",
    "tmp_name", "write_config", "write_description", "write_metrics", "write_predictions", "writing", "saved_config", "without_matrices",
]
