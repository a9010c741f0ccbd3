"""Keras layers: corner pooling and the corner prediction modules."""
