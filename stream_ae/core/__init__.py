"""The pure core: windowing, state and its codec, scoring, post-processing, alert policy and
message records. numpy only: no I/O, no Kafka, no Redis, no Keras (import-linter checks it)."""
