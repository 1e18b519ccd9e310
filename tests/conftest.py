"""The tests' fixtures, each defined once in a module of :mod:`tests.support` and plugged in
here (no test module imports a fixture):

- :mod:`tests.support.servers`: ``broker``, ``redis_server``, ``redis_client``,
  ``topic_factory`` (a real Kafka-protocol broker and a real Redis, one per session);
- :mod:`tests.support.tiny_model`: ``tiny_model`` (a small autoencoder trained once per
  session on the synthetic fleet the worker tests stream);
- :mod:`tests.support.redis_servers`: ``redis_factory``, ``redis_cluster``, ``redis_tls`` (extra
  `redis-server` processes: with persistence, a 3-master cluster, TLS with an ACL user);
- :mod:`tests.support.kafka_clients`: ``kafka_client`` (each worker test once per client);
- :mod:`tests.support.worker_setup`: ``new_worker_config`` (a worker test's settings on topics
  of its own, over the session's broker, Redis and tiny model and this run's Kafka client).

Plain helpers (no fixtures) live next to them, one concept a module: ``paths`` (repository root,
NAB/SKAB data), ``waiting``, ``kafka_topics`` (produce, read back, committed offsets),
``worker_process`` (worker settings, an in-process worker, a worker subprocess, its metrics),
``worker_forks`` (worker subprocesses forked from a helper that imported TensorFlow once, for
tests that restart workers many times), ``port_gate``, ``outcomes`` (stored states and the
oracle of a run), ``training_data``.
"""

pytest_plugins = [
    "tests.support.servers",
    "tests.support.tiny_model",
    "tests.support.redis_servers",
    "tests.support.kafka_clients",
    "tests.support.worker_setup",
]
