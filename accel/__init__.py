"""The ``accel`` command line of the edge-LLM accelerator toolkit."""
