"""Converting a pretrained model to another attention so that it becomes a good model again.

Stage 1, :mod:`.transfer`: attention transfer (the new attention learns to reproduce the original one, layer by
layer, with the rest of the model frozen). Stage 2 is fine-tuning on the training loop (``recipes/convert.py``).
"""

from .transfer import (
    LOSSES,
    TRANSFER_ATTENTION,
    TransferError,
    TransferObjective,
    TransferResult,
    attention_transfer,
    default_trainable,
)

__all__ = ["LOSSES", "TRANSFER_ATTENTION", "TransferError", "TransferObjective", "TransferResult",
           "attention_transfer", "default_trainable"]
