"""Desktop side: convert the trained Keras model to TFLite (int8, float16, Edge TPU-ready) and validate it."""
