"""Reference LLM in JAX: configs, float reference, integer (accelerator) numerics,
weights in the Hugging Face layout, training and evaluation of the ``tiny`` model."""
