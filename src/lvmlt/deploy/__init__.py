"""After training: classify new images (``lvmlt predict``), adapt to their class mix, and
export a run as a bundle that runs without torch (``lvmlt export``)."""
