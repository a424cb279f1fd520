"""Autoregressive image models: Gated PixelCNN and a small image GPT."""
