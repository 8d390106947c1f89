"""Trained models: ``inference`` (a checkpoint path or MLflow run id -> a model), ``evaluate``
(test-split measures), ``bench`` (latency and throughput), ``export`` (ONNX, TorchScript)."""
