"""The app's parts: bundle discovery, the inference task and the training task."""
