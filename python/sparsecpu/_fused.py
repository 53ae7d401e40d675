"""What sparsecpu's fused Hugging Face blocks (:mod:`sparsecpu._gpt2`, :mod:`sparsecpu._bert`) share:
the check that transformers' code is the code a fused forward reproduces, and the check for hooks
that a fused forward would skip. Imports nothing from transformers."""

from __future__ import annotations

import hashlib
import inspect
from typing import Dict, Optional, Set

from torch import nn


def fingerprint(fn) -> Optional[str]:
    """SHA-256 (first 16 hex digits) of a function's source, or None without one."""
    try:
        source = inspect.getsource(inspect.unwrap(fn))
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def unverified(verified: Dict[object, Set[str]], versions: str) -> Optional[str]:
    """None when every function in ``verified`` (keyed by the function, or a class for its
    ``forward``) has one of the listed source fingerprints, else why not."""
    import transformers

    for owner, prints in verified.items():
        fn = owner.forward if isinstance(owner, type) else owner
        if fingerprint(fn) not in prints:
            return (f"{fn.__qualname__} of transformers {transformers.__version__} is not the code sparsecpu "
                    f"verified (transformers {versions})")
    return None


# transformers' output capture (``output_attentions=True``, ...) hooks the attention modules once any
# output is asked for, and records the attention weights they return: None from sparsecpu's
# attention and from SDPA, which the fused paths run, so skipping that hook records the same.
_CAPTURE_HOOKS = "transformers.utils.output_capturing"


def hooked(*modules: nn.Module) -> bool:
    """Whether a forward hook (other than transformers' output capture) would see one of these
    modules called."""
    for m in modules:
        if m._forward_pre_hooks:
            return True
        hooks = m._forward_hooks
        if hooks and any(getattr(hook, "__module__", None) != _CAPTURE_HOOKS for hook in hooks.values()):
            return True
    return False
