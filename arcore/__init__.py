"""Shared core: the sampling engine, caches, decoding, base LightningModule, callbacks."""
