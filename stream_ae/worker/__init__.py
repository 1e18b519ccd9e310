"""The worker shell: wiring (``bootstrap``, the only place things are put together), the
poll-batch loop, the processor shared with the evaluators, model hot-swap and metrics."""
