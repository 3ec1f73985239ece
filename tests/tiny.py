"""A tiny BERT classifier and its tokenizer, built from a config in a fraction of a second.

Tests and benchmarks train it on CPU to check real effects (frozen weights stay put,
L1 shrinks weights, resumes reproduce the curve) without downloading anything. The
tokenizer is a WordLevel vocabulary of the words in `texts`, saved beside the model so
that `from_pretrained` loads both from one directory, as it would a hub model.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over the words of `texts`, BERT-style specials."""
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {token: i for i, token in enumerate([*SPECIAL, *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    return bert_style(backend, vocab)


def make_wordpiece_tokenizer(tokens: Iterable[str]) -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer over `tokens` ("##" continues a word), BERT-style
    specials: for tests that need words split into pieces."""
    vocab = {token: i for i, token in enumerate([*SPECIAL, *tokens])}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return bert_style(backend, vocab)


def bert_style(backend: Tokenizer, vocab: dict[str, int]) -> PreTrainedTokenizerFast:
    """`backend` lower-casing, wrapped in [CLS] ... [SEP] with BERT's special tokens."""
    backend.normalizer = normalizers.Lowercase()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def make_tiny_model(
    path: Path,
    texts: Iterable[str],
    num_labels: int = 2,
    layers: int = 2,
    hidden: int = 32,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised tiny BERT classifier and its tokenizer to `path`."""
    import torch

    tokenizer = make_tokenizer(texts)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=256,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_causal_lm(path: Path, texts: Iterable[str], layers: int = 2, seed: int = 0) -> Path:
    """Save a randomly initialised tiny GPT-2 and a word-level tokenizer ending texts with [SEP]."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = make_tokenizer(texts)
    tokenizer.eos_token = "[SEP]"
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=layers,
        n_head=2,
        n_positions=128,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
CHAT_ROLES = ["system", "developer", "user", "assistant"]


def make_chat_tokenizer(
    texts: Iterable[str], template: str | None = None
) -> PreTrainedTokenizerFast:
    """The word-level tokenizer over `texts` and the role names, knowing ChatML's
    <|im_start|> and <|im_end|> as special tokens (end of text: <|im_end|>), with `template`
    as its own chat template (None: it has none)."""
    tokenizer = make_tokenizer([*texts, *CHAT_ROLES])
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = template
    return tokenizer


def make_tiny_chat_lm(path: Path, texts: Iterable[str], template: str | None = None) -> Path:
    """Save a randomly initialised tiny GPT-2 and `make_chat_tokenizer`'s tokenizer to `path`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = make_chat_tokenizer(texts, template)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=256,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TINY_JOB = """\
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata:
  name: tiny
spec:
  model:
    source: model
    labels: [negative, positive]
  data:
    train: {{source: data/train.csv}}
    validation: {{source: data/validation.csv}}
    maxLength: 32
  training: {{epochs: {epochs}, batchSize: {batch}, learningRate: 3e-3}}
  output: {{uri: out}}
"""


def tiny_job_manifest(epochs: int = 1, batch: int = 16, search: str = "") -> str:
    """A `kubetune run` manifest for the tiny model beside its data (relative paths);
    `search` is the indented body of spec.search, if any."""
    manifest = TINY_JOB.format(epochs=epochs, batch=batch)
    return manifest + (f"  search:\n{search}" if search else "")


def lay_out_tiny_job(folder: Path, model_dir: Path, data: tuple[Path, Path]) -> Path:
    """A folder as a user keeps it: the model in model/, the data in data/."""
    shutil.copytree(model_dir, folder / "model")
    (folder / "data").mkdir()
    shutil.copy(data[0], folder / "data/train.csv")
    shutil.copy(data[1], folder / "data/validation.csv")
    return folder
