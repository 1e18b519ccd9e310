"""Benchmarks behind ``stream-ae bench``: figures measured side by side in one run, as ratios.

This machine (and most CI machines) is noisy, so every target is a ratio of two rates measured
in the same run, never an absolute time; no test asserts on speed.

- :mod:`stream_ae_dev.bench.model_bench`: the naive per-window ``model.predict`` loop against the
  batched :class:`~stream_ae.model.inference.Scorer` at the worker's bucket sizes.
- :mod:`stream_ae_dev.bench.store_bench`: events/s, Redis round trips per poll batch and Redis
  memory per stream of the window store.
- :mod:`stream_ae_dev.bench.e2e_bench`: broker -> worker processes -> alerts against the raw
  consume rate and the model alone; event-to-alert latency at half load; scaling with
  partitions/workers and streams.
- :mod:`stream_ae_dev.bench.gpu_bench`: a standalone script for a CUDA machine (PyTorch backend).
- :mod:`stream_ae_dev.bench.report`: the figures, the table and the JSON file.
"""
