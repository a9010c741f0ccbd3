"""Export: the serving module, SavedModel (TF Serving layout) and TFLite conversion."""
