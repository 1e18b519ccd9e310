"""The edges: Kafka clients, the Redis connection and the window stores, each behind a narrow
interface, with client errors wrapped into :mod:`stream_ae.errors`. No model runtime here."""
