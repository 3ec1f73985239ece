"""The data pipeline: files in, tokenized batches out.

A fine-tune fails most often on its data, and a data problem must fail the job with a
message that names the file, the column or the manifest field, and the counts (it becomes
the DataValidated condition), never with a pyarrow traceback. So every stage checks what
it relies on and raises `DataError` in the user's terms.

Every step of the data, from a source URI to a batch, lives in this package. A module
named for what it does to the rows (loading, screening, cleaning, augmenting, balancing,
tokenizing, batching, packing) is a stage of the pipeline; a module named for a thing
(quality, near_duplicates, balance, augment, label_noise) is the algorithm a stage calls,
which knows no file, manifest or tokenizer and is tested on plain columns.

The stages, in order (docs/data.md describes them for users):

- sources: resolve the manifest's URIs (path, pvc://, hf://, pkg://) to local paths;
- loading: read each source into an Arrow table (CSV cells as text, so "007" stays "007");
- columns: check that each file has the columns the manifest names;
- screening: the per-file quality rules (missing values, unknown labels);
- labels: map the label column to class ids;
- splits: hold out a stratified validation split when no validation source is given (and
  the cross-validation folds);
- augmenting: add the synthetic rows; later, EDA augmentation of the training rows
  (augment.py);
- cleaning: the quality rules of quality.py and the label-noise detector of
  label_noise.py (a DataError when they refuse the data);
- balancing: resampling of the training rows (balance.py), and class weights;
- tokenizing: the model's input columns, tokenized without padding;
- batching: `LengthGroupedSampler` puts rows of similar length in a batch, so that the
  collator's padding to the longest row stays small;
- packing: with data.packing, causal-LM training rows packed into sequences of
  data.maxLength tokens (the recipe packs when it builds the training loader).

Conversations (data.messagesColumn) take their own path through the same stages
(chat_pipeline.py): each file's conversations are checked and rendered with the chat
template as it is read (conversations.py), the rules see their text, and the tokens carry
the loss on the assistant's messages only.

pipeline.py runs them in this order (`prepare_data`), language_model.py runs the few that
apply to a causal language model, preferences.py those of its preference rows (a prompt,
a chosen and a rejected response: training.objective dpo; chat_preferences.py when they
are conversations), and prepared.py holds what they hand on (`PreparedData`).
report.py is the data report: it counts classes and groups as they reach the rules and as
they leave for the model, and token_budget.py a causal LM's tokens (per epoch, in the loss,
cut by data.maxLength). cache.py keeps the pipeline's output in the run's folder, so a
restart or a second worker reads it instead of preparing the data again. Every stage works
on whole Arrow columns (pyarrow.compute, numpy, batched tokenizer calls), never on one row
at a time in Python, except the EDA edits, which are per row by nature and run only on the
(scarce) training rows.

This package re-exports what the rest of the trainer uses, so callers import from
`kubetune_trainer.data` and never from its modules.
"""

from kubetune_trainer.config import MISSING_GROUP
from kubetune_trainer.data.augmenting import SYNTHETIC_COLUMN
from kubetune_trainer.data.balancing import class_weights
from kubetune_trainer.data.batching import MEGA_BATCH_FACTOR, LengthGroupedSampler
from kubetune_trainer.data.cleaning import TOKEN_COUNT_BATCH, apply_quality_rules, quality_settings
from kubetune_trainer.data.conversations import (
    ConversationError,
    named_template,
    render_conversation,
)
from kubetune_trainer.data.language_model import IGNORED_LABEL, prepare_language_model_data
from kubetune_trainer.data.loading import load_table, read_source
from kubetune_trainer.data.packing import (
    PACKED_ARCHITECTURES,
    PackedCollator,
    PackedRows,
    PackingStats,
    pack_rows,
    packing_summary,
)
from kubetune_trainer.data.pipeline import prepare_audit_rows, prepare_data
from kubetune_trainer.data.preferences import REFERENCE_COLUMNS, PreferenceCollator
from kubetune_trainer.data.prepared import AuditRows, PreparedData
from kubetune_trainer.data.rows import DataError
from kubetune_trainer.data.splits import kfold_splits, stratified_split

__all__ = [
    "IGNORED_LABEL",
    "MEGA_BATCH_FACTOR",
    "MISSING_GROUP",
    "PACKED_ARCHITECTURES",
    "REFERENCE_COLUMNS",
    "SYNTHETIC_COLUMN",
    "TOKEN_COUNT_BATCH",
    "AuditRows",
    "ConversationError",
    "DataError",
    "LengthGroupedSampler",
    "PackedCollator",
    "PackedRows",
    "PackingStats",
    "PreferenceCollator",
    "PreparedData",
    "apply_quality_rules",
    "class_weights",
    "kfold_splits",
    "load_table",
    "named_template",
    "pack_rows",
    "packing_summary",
    "prepare_audit_rows",
    "prepare_data",
    "prepare_language_model_data",
    "quality_settings",
    "read_source",
    "render_conversation",
    "stratified_split",
]
