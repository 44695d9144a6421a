"""After training: classify new images (``lvmlt predict``), adapt to their class mix, and
export a run as a bundle that runs without torch (``lvmlt export``).

``predictor`` runs a prediction job from ``sources`` (what to classify), ``stream`` (decode,
encode, reduce, classify in batches), ``adaptation`` (``--adapt``) and ``rows`` (CSV, JSONL
or a table), none of which imports torch; ``run_model`` (torch) and ``bundle`` (ONNX Runtime
or OpenVINO) are the models it runs; ``export`` writes a bundle; ``cli`` the two commands."""
