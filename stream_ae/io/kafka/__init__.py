"""Kafka at the edge, behind one narrow interface.

- :mod:`.interface`: what the rest of stream-ae sees: :class:`BatchConsumer` (poll a batch,
  commit, seek, offsets, a rebalance callback run on the poll thread) and :class:`Producer`
  (send, flush that says whether everything arrived).
- :mod:`.connection`: :class:`KafkaConnection`, built once from the settings (brokers,
  security, client library), and the worker's consumer and producer.
- :mod:`.kafka_python` and :mod:`.confluent`: the two clients (``STREAM_AE_KAFKA_CLIENT``);
  :mod:`.adapter`: what they share (a consumer's and a producer's options, client errors
  wrapped, the rebalance relay).

Works against Apache Kafka and any Kafka-protocol broker (the tests use Tansu): nothing here
relies on transactions, fenced commits or the reported log end. Client errors leave as
:class:`~stream_ae.errors.BrokerError` with the client's ``retriable`` flag.
"""

from stream_ae.io.kafka.connection import (
    KafkaClient,
    KafkaConnection,
    confluent_installed,
    security_config,
    worker_consumer,
    worker_producer,
)
from stream_ae.io.kafka.interface import (
    BatchConsumer,
    ConsumedRecord,
    Partition,
    Producer,
    RebalanceCallback,
    Record,
    lag,
)

__all__ = [
    "BatchConsumer",
    "ConsumedRecord",
    "KafkaClient",
    "KafkaConnection",
    "Partition",
    "Producer",
    "RebalanceCallback",
    "Record",
    "confluent_installed",
    "lag",
    "security_config",
    "worker_consumer",
    "worker_producer",
]
