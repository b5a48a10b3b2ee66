"""Pretrained encoders on disk: save one, check it against an FCN, copy it in by layer name, freeze it.

A pretrain run folder holds `encoder.weights.h5` (the weights of `build_encoder(model)`) and
`encoder.json` (written last: the model name, input size, normalisation, how it was trained and every
layer with weights, by name and weight shapes).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import keras

from .model import build_encoder
from .rundir import atomic_write_text, save_atomic
from .runtime.errors import EdgesegError

ENCODER_WEIGHTS = "encoder.weights.h5"
ENCODER_INFO = "encoder.json"


def layer_shapes(model: keras.Model) -> dict[str, list[list[int]]]:
    """Weight shapes of every layer that has weights, by layer name."""
    return {layer.name: [list(w.shape) for w in layer.weights] for layer in model.layers if layer.weights}


def save_encoder(encoder: keras.Model, run_dir: Path, info: dict[str, Any]) -> None:
    """Write the encoder's weights, then `encoder.json` (`info` plus the layer list)."""
    run_dir = Path(run_dir)
    save_atomic(run_dir / ENCODER_WEIGHTS, encoder.save_weights)
    layers = [{"name": name, "shapes": shapes} for name, shapes in layer_shapes(encoder).items()]
    atomic_write_text(run_dir / ENCODER_INFO, json.dumps({**info, "layers": layers}, indent=2) + "\n")


def _read_info(run_dir: Path) -> dict[str, Any]:
    """A pretrain run's `encoder.json`, with `shapes`: layer name -> weight shapes."""
    path = run_dir / ENCODER_INFO
    if not path.is_file():
        raise EdgesegError(f"{run_dir}: not a pretrain run (no {ENCODER_INFO})")
    try:
        info = json.loads(path.read_text())
        info["shapes"] = {layer["name"]: layer["shapes"] for layer in info["layers"]}
        if not isinstance(info.get("model"), str):
            raise KeyError("model")
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise EdgesegError(f"{path}: invalid encoder description ({type(exc).__name__}: {exc})") from None
    return info


def init_encoder(model: keras.Model, run_dir: Path, model_name: str) -> None:
    """Copy a pretrain run's encoder weights into the FCN `model` (a `model_name`) by layer name.

    Refused with a one-line error when the run was pretrained for another model or its layers differ.
    """
    run_dir = Path(run_dir)
    info = _read_info(run_dir)
    path = run_dir / ENCODER_INFO
    if info["model"] != model_name:
        raise EdgesegError(f"{path}: encoder pretrained for {info['model']}, but the model is {model_name} "
                           f"(pretrain with --model {model_name})")
    encoder = build_encoder(model_name)
    wanted, saved = layer_shapes(encoder), info["shapes"]
    for name in dict.fromkeys([*wanted, *saved]):
        if wanted.get(name) != saved.get(name):
            raise EdgesegError(f"{path}: layer {name} has weight shapes {saved.get(name, 'none')} in the pretrained "
                               f"encoder but {wanted.get(name, 'none')} in {model_name}")
    try:
        encoder.load_weights(run_dir / ENCODER_WEIGHTS)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise EdgesegError(f"{run_dir / ENCODER_WEIGHTS}: cannot load encoder weights ({reason})") from None
    copy_encoder_weights(encoder, model, model_name)


def copy_encoder_weights(source: keras.Model, target: keras.Model, model_name: str) -> None:
    """Copy the weights of `model_name`'s encoder layers from `source` to `target` (both hold them, by name)."""
    for name in encoder_layer_names(model_name):
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())


@functools.cache
def encoder_layer_names(model_name: str) -> tuple[str, ...]:
    """The names of the layers with weights in `model_name`'s encoder."""
    return tuple(layer_shapes(build_encoder(model_name)))


def set_encoder_trainable(model: keras.Model, model_name: str, trainable: bool) -> bool:
    """Freeze or unfreeze the encoder of an FCN; True when that changed anything (then recompile it)."""
    changed = False
    for name in encoder_layer_names(model_name):
        layer = model.get_layer(name)
        changed |= layer.trainable != trainable
        layer.trainable = trainable
    return changed
