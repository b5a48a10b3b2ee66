"""Commands that train or convert need the training extra (TensorFlow and the converters); on a device
install (`edgeseg[cpu]`, `edgeseg[jetson]`) they say so in one line instead of failing on an import."""
from __future__ import annotations

from ..console import is_quiet
from ..runtime.errors import EdgesegError

#: Modules only the `train` extra installs (with `convert`): a command missing one needs that extra.
TRAINING_MODULES = {"tensorflow", "keras", "tf2onnx", "tensorboard", "matplotlib", "onnxruntime"}
#: Where the other optional modules come from.
INSTALL_HINTS = {"onnx": "pip install onnx (in the jetson and train extras)",
                 "cv2": "pip install 'edgeseg[cpu]' (or 'edgeseg[desktop]' for windows)"}


def training_extra_message(command: str) -> str:
    return f"edgeseg {command} needs the training extra: pip install 'edgeseg[train]'"


def missing_module_message(command: str, module: str) -> str:
    """One line for a command that stopped on a module this install lacks."""
    if module.split(".")[0] in TRAINING_MODULES:
        return training_extra_message(command)
    hint = INSTALL_HINTS.get(module.split(".")[0])
    return f"edgeseg {command} needs {module}, which is not installed here" + (f": {hint}" if hint else "")


def require_training(command: str) -> None:
    """Import TensorFlow and Keras for `command` (after its options are checked, before any work); one line
    naming the extra when they are missing. Without --verbose, Keras' printed messages go to `logging`
    (so to the log) too."""
    try:
        import keras
        import tensorflow  # noqa: F401
    except ImportError:
        raise EdgesegError(training_extra_message(command)) from None
    if is_quiet():
        keras.config.disable_interactive_logging()
