"""Datasets for training and evaluation: readers (CamVid, image/mask pairs, VOC) and a synthetic set.

The TensorFlow input pipeline lives in `edgeseg.data.pipeline` (imported on demand: it needs TensorFlow).
"""
from .readers import DataError, DatasetSpec, Sample, load_all, load_sample, load_valid, open_dataset, validate
from .synth import DEFAULT_SYNTH_CLASSES, generate_synthetic

__all__ = ["DEFAULT_SYNTH_CLASSES", "DataError", "DatasetSpec", "Sample", "generate_synthetic", "load_all",
           "load_sample", "load_valid", "open_dataset", "validate"]
