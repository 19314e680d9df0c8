"""On-device runtime: one shared backbone, many apps' adapters, micro-batched across apps; HTTP service and
ONNX export (``mtpf serve``, ``mtpf export``). See docs/runtime.md."""
from mtpf.runtime.app import WORD_RE, AppError, FingerprintMismatchError, read_app, split_words
from mtpf.runtime.core import (
                               Runtime,
                               RuntimeClosedError,
                               RuntimeOverloadedError,
                               TaskMismatchError,
                               UnknownAppError,
)

__all__ = [
                               "WORD_RE",
                               "AppError",
                               "FingerprintMismatchError",
                               "Runtime",
                               "RuntimeClosedError",
                               "RuntimeOverloadedError",
                               "TaskMismatchError",
                               "UnknownAppError",
                               "read_app",
                               "split_words",
]
