"""The model and its artifact: the LSTM autoencoder family (Keras, ``keras.ops`` only), the
artifact format, the registry's read side, and the batched scorer. Knows no broker and no Redis."""
