"""stream-ae: streaming anomaly detection on Kafka with LSTM autoencoders."""

__version__ = "0.1.0"
