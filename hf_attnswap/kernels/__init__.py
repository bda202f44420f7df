"""Fast attention paths. Kernels know nothing of Transformers or of the mechanisms' options: they take
tensors, an :class:`AttentionMask` and plain numbers. Each has its reference in ``hf_attnswap.mechanisms``."""
