"""WaveNet over 8-bit mu-law audio on the shared autoregressive engine (``arcore``)."""
