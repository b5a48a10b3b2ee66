"""edgeseg: train, quantize, compile and run real-time semantic segmentation at the edge."""

__version__ = "0.1.0"
