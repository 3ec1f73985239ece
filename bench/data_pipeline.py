r"""Data pipeline: kubetune's quality rules and resampling against the same work in pandas.

    python bench/data_pipeline.py [--rows 1000000] [--repeats 3]

The bench writes a training file of --rows rows and a validation file of a tenth as many
(text of 5 to 60 Zipf-distributed words, 5 classes of 40/25/15/12/8%) with planted faults:
3% duplicates (half exact, half differing only in case, punctuation or spacing), 1% empty
or whitespace-only texts (a tenth of them null), 0.1% texts repeated under another label,
0.05% garbage texts (a control character or U+FFFD), and in the training file 0.5% rows
copied from the validation file. Then, each in a fresh process, it does the same work two
ways, reading the files included, tokenization and label-noise detection left out:

  (k) kubetune: the reader prepare_data uses, `quality.check` with the default rules
      (empty, garbage, duplicates, conflicting labels, leakage; all in drop mode), then
      `balance.resample(..., "oversample", 1.0, seed)` on the kept training rows
  (p) pandas, written in the bench as a data scientist would: `str.strip`, `str.contains`,
      a normalised key column, `duplicated`, `groupby(...).nunique`, `isin`, and per class
      `sample(replace=True)` up to the largest class

It prints rows/s (training plus validation rows over the seconds from the first read to
the balanced table) and the seconds per stage of the run of median time over --repeats
interleaved rounds (k p, k p, ...), the highest peak RSS of the rounds (the child's
ru_maxrss, imports included), and the ratio k/p. Targets on 2 cores: k >= 100,000 rows/s,
k's peak RSS < 2 GiB, k/p >= 2. It exits non-zero, naming the counts, unless both sides
drop the same rows per rule and end with the same rows per class.

The files are Parquet: it is what a million-row dataset comes as, both sides read it with
the same pyarrow reader (so the comparison is of the rules, not of two CSV parsers), and it
keeps null apart from "" and control characters as they are. Imports (torch, transformers
and datasets come with the trainer's data module) are timed apart and not counted.

The two sides' regexes differ outside ASCII letters and punctuation marks: kubetune drops
`\p{P}` (punctuation, `_` included) where pandas' idiom `[^\w\s]` drops whatever is
neither a word character nor a space (symbols such as `$` too, `_` not), and kubetune's
whitespace is `[\s\p{Z}]`. The data holds ASCII letters, the marks . , ! ? and ASCII
spaces, on which both match the same characters, so both sides must drop the same rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SEED = 42
CLASSES = ("account", "billing", "delivery", "product", "returns")
CLASS_SHARES = (0.40, 0.25, 0.15, 0.12, 0.08)
VOCABULARY_SIZE = 4000
ZIPF_EXPONENT = 1.1
WORDS_PER_ROW = (5, 60)
COMMA_SHARE = 0.05
"""Share of words followed by a comma (punctuation the normalised text drops)."""
VALIDATION_SHARE = 0.1
"""Validation rows per training row."""
FAULTS = {"duplicate": 0.03, "empty": 0.01, "conflicting": 0.001, "garbage": 0.0005}
LEAKED_SHARE = 0.005
"""Training rows copied from the validation file."""
EMPTY_TEXTS = ("", " ", "   ", "\t", " \n ")
BROKEN_SUFFIXES = (" \ufffd", "\ufffd\ufffd", " \x00", "\x07", " \x1b", "\x9f")

TARGET_ROWS_PER_SECOND = 100_000
TARGET_PEAK_RSS_MIB = 2048
TARGET_RATIO = 2.0
SIDES = {"k": "kubetune", "p": "pandas"}

Result = dict[str, Any]
Ids = npt.NDArray[np.int64]


# --- the data, made once per run --------------------------------------------------------


def vocabulary(rng: np.random.Generator) -> pa.Array:
    """VOCABULARY_SIZE made-up lowercase words, then the same words with a comma."""
    lengths = rng.integers(2, 11, VOCABULARY_SIZE)
    letters = rng.integers(ord("a"), ord("z") + 1, int(lengths.sum())).astype(np.uint8)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    words = pa.StringArray.from_buffers(
        VOCABULARY_SIZE, pa.py_buffer(offsets.tobytes()), pa.py_buffer(letters.tobytes())
    )
    return pa.concat_arrays([words, pc.binary_join_element_wise(words, ",", "")])


def sentences(rng: np.random.Generator, words: pa.Array, count: int) -> pa.Array:
    """`count` texts: Zipf-distributed words, the first capitalised, an optional end mark."""
    lengths = rng.integers(WORDS_PER_ROW[0], WORDS_PER_ROW[1] + 1, count)
    ranks = np.arange(1, VOCABULARY_SIZE + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    ids = rng.choice(VOCABULARY_SIZE, size=int(lengths.sum()), p=ranks / ranks.sum())
    ids += (rng.random(len(ids)) < COMMA_SHARE) * VOCABULARY_SIZE
    offsets = pa.array(np.concatenate(([0], np.cumsum(lengths))).astype(np.int32))
    joined = pc.utf8_capitalize(
        pc.binary_join(pa.ListArray.from_arrays(offsets, words.take(ids)), " ")
    )
    endings = pa.array(np.array([".", "!", "?", ""])[rng.choice(4, count, p=[0.6, 0.1, 0.1, 0.2])])
    return pc.binary_join_element_wise(joined, endings, "")


def varied(rng: np.random.Generator, texts: pa.Array) -> pa.Array:
    """Each text as it is (half of them) or changed only in case, punctuation or spacing."""
    kinds = rng.choice(5, len(texts), p=[0.5, 0.125, 0.125, 0.125, 0.125])
    return pc.choose(
        pa.array(kinds),
        texts,
        pc.utf8_lower(texts),
        pc.replace_substring_regex(texts, r"[.,!?]", ""),
        pc.replace_substring(texts, " ", "  "),
        pc.binary_join_element_wise("  ", pc.utf8_upper(texts), "!!! ", ""),
    )


def with_faults(
    rng: np.random.Generator,
    texts: pa.Array,
    labels: Ids,
    leaked_from: tuple[pa.Array, Ids] | None,
) -> tuple[pa.Table, Ids]:
    """The split with FAULTS (and rows copied from `leaked_from`) planted at random rows.

    Returns the table and the rows left as they were (safe to copy from elsewhere).
    """
    count = len(texts)
    order = rng.permutation(count)
    sizes = {fault: round(share * count) for fault, share in FAULTS.items()}
    if leaked_from is not None:
        sizes["leaked"] = round(LEAKED_SHARE * count)
    bounds = np.cumsum([0, *sizes.values()])
    targets = {fault: order[bounds[i] : bounds[i + 1]] for i, fault in enumerate(sizes)}
    untouched = np.sort(order[bounds[-1] :])
    pieces, rows, new_labels = [texts], np.arange(count), labels.copy()
    for fault, where in targets.items():
        if fault == "leaked":
            assert leaked_from is not None
            source_texts, source_labels = leaked_from
            chosen = rng.choice(len(source_texts), len(where), replace=False)
            made, new_labels[where] = varied(rng, source_texts.take(chosen)), source_labels[chosen]
        elif fault == "empty":
            made = pa.array(rng.choice(np.array(EMPTY_TEXTS, dtype=object), len(where)))
            made = pc.if_else(pa.array(rng.random(len(where)) < 0.1), None, made)
        else:
            chosen = rng.choice(untouched, len(where))
            made = texts.take(chosen)
            if fault == "garbage":
                suffixes = np.array(BROKEN_SUFFIXES, dtype=object)
                made = pc.binary_join_element_wise(
                    made, pa.array(rng.choice(suffixes, len(where))), ""
                )
            else:
                made = varied(rng, made)
                shift = 0 if fault == "duplicate" else rng.integers(1, len(CLASSES), len(where))
                new_labels[where] = (labels[chosen] + shift) % len(CLASSES)
        rows[where] = sum(len(piece) for piece in pieces) + np.arange(len(where))
        pieces.append(made.cast(pa.string()))
    text = pa.concat_arrays(pieces).take(pa.array(rows))
    label = pa.array(np.array(CLASSES, dtype=object)[new_labels], pa.string())
    return pa.table({"text": text, "label": label}), untouched


def write_data(folder: Path, rows: int) -> tuple[Path, Path]:
    """The training and validation Parquet files (the same for every round of a run)."""
    rng = np.random.default_rng(SEED)
    words = vocabulary(rng)
    validation_rows = round(rows * VALIDATION_SHARE)
    validation_labels = rng.choice(len(CLASSES), validation_rows, p=CLASS_SHARES)
    validation_texts = sentences(rng, words, validation_rows)
    validation, clean = with_faults(rng, validation_texts, validation_labels, None)
    leaked_from = (validation_texts.take(pa.array(clean)), validation_labels[clean])
    train_labels = rng.choice(len(CLASSES), rows, p=CLASS_SHARES)
    train, _ = with_faults(rng, sentences(rng, words, rows), train_labels, leaked_from)
    paths = folder / "train.parquet", folder / "validation.parquet"
    pq.write_table(train, paths[0])
    pq.write_table(validation, paths[1])
    return paths


# --- (k) kubetune -----------------------------------------------------------------------


def kubetune_side(train_path: Path, validation_path: Path) -> Result:
    started = time.perf_counter()
    from kubetune_trainer.config import DataQualitySpec, DataSource
    from kubetune_trainer.data import quality_settings, read_source
    from kubetune_trainer.data.balance import resample
    from kubetune_trainer.data.quality import check

    stamps = {"imports": time.perf_counter()}
    imports_rss, imports_cpu = peak_rss_mib(), time.process_time()

    def read(path: Path, field: str) -> pa.Table:
        """What prepare_data reads with (load_table adds a datasets fingerprint of the rows)."""
        return read_source(DataSource.model_validate({"source": str(path)}), field).table

    train, validation = read(train_path, "data.train"), read(validation_path, "data.validation")
    rows_in = train.num_rows + validation.num_rows
    stamps["read"] = time.perf_counter()
    keep_train, keep_validation, report = check(
        train,
        validation,
        text_column="text",
        label_column="label",
        settings=quality_settings(DataQualitySpec(), max_length=128),  # no lengths: no length rule
    )
    assert keep_validation is not None
    kept = train.take(np.flatnonzero(keep_train))
    kept_validation = validation.take(np.flatnonzero(keep_validation))
    del train, validation  # prepare_data keeps only the kept rows too
    stamps["rules"] = time.perf_counter()
    class_ids = pc.index_in(kept.column("label"), value_set=pa.array(CLASSES))
    label_ids = np.asarray(class_ids.to_numpy(), dtype=np.int64)
    balanced = kept.take(resample(label_ids, len(CLASSES), "oversample", 1.0, SEED))
    stamps["balance"] = time.perf_counter()
    cpu_seconds = time.process_time() - imports_cpu
    per_class = pc.value_counts(balanced.column("label")).to_pylist()
    return summary(
        started,
        stamps,
        imports_rss_mib=imports_rss,
        cpu_seconds=cpu_seconds,
        rows_in=rows_in,
        matched={f"{r.split} {r.rule}": r.matched for r in report.results if r.matched},
        rows_out={"train": kept.num_rows, "validation": kept_validation.num_rows},
        classes={item["values"]: item["counts"] for item in per_class},
    )


# --- (p) pandas -------------------------------------------------------------------------


PANDAS_BROKEN = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]"
"""kubetune's control characters and U+FFFD, as a Python regex."""
PANDAS_UNPRINTABLE = r"[^\w\s.,!?;:'\"()\-]"
"""Not a word character, space or punctuation mark; on this data (ASCII words, these marks)
it matches what kubetune's `[^\\p{L}\\p{M}\\p{N}\\p{P}\\p{Z}\\s]` matches."""
MAX_NON_PRINTABLE_FRACTION = 0.3
"""The default of data.quality.maxNonPrintableFraction."""


def pandas_side(train_path: Path, validation_path: Path) -> Result:
    started = time.perf_counter()
    import pandas as pd

    stamps = {"imports": time.perf_counter()}
    imports_rss, imports_cpu = peak_rss_mib(), time.process_time()
    train, validation = pd.read_parquet(train_path), pd.read_parquet(validation_path)
    rows_in = len(train) + len(validation)
    stamps["read"] = time.perf_counter()
    matched: dict[str, int] = {}
    kept = pandas_clean(train, "train", matched)
    kept_validation = pandas_clean(validation, "validation", matched)
    leaked = kept["key"].ne("") & kept["key"].isin(kept_validation["key"])
    matched["train leakage"] = int(leaked.sum())
    kept = kept[~leaked].drop(columns="key")
    del train, validation
    stamps["rules"] = time.perf_counter()
    largest = kept["label"].value_counts().max()
    extra = [
        rows.sample(largest - len(rows), replace=True, random_state=SEED)
        for _, rows in kept.groupby("label")
    ]
    balanced = pd.concat([kept, *extra])
    stamps["balance"] = time.perf_counter()
    cpu_seconds = time.process_time() - imports_cpu
    return summary(
        started,
        stamps,
        imports_rss_mib=imports_rss,
        cpu_seconds=cpu_seconds,
        rows_in=rows_in,
        matched={rule: count for rule, count in matched.items() if count},
        rows_out={"train": len(kept), "validation": len(kept_validation)},
        classes={str(k): int(v) for k, v in balanced["label"].value_counts().items()},
    )


def pandas_clean(frame: Any, split: str, matched: dict[str, int]) -> Any:
    """The rows of one split the rules keep, with their normalised text in column `key`."""
    text = frame["text"]
    empty = text.isna() | text.str.strip().eq("")
    frame = frame[~empty]
    text = frame["text"]
    unprintable = text.str.count(PANDAS_UNPRINTABLE) / text.str.len()
    garbage = text.str.contains(PANDAS_BROKEN, regex=True) | unprintable.gt(
        MAX_NON_PRINTABLE_FRACTION
    )
    frame = frame[~garbage]
    key = (
        frame["text"]
        .str.lower()
        .str.replace(r"[^\w\s]", "", regex=True)
        .str.replace(r"\s+", " ", regex=True)
        .str.strip()
    )
    frame = frame.assign(key=key)
    duplicated = frame["key"].ne("") & frame.duplicated(["key", "label"])
    frame = frame[~duplicated]
    labels_per_key = frame.groupby("key")["label"].transform("nunique")
    conflicting = frame["key"].ne("") & labels_per_key.gt(1)
    frame = frame[~conflicting]
    for rule, rows in (
        ("empty", empty),
        ("garbage", garbage),
        ("duplicates", duplicated),
        ("conflictingLabels", conflicting),
    ):
        matched[f"{split} {rule}"] = int(rows.sum())
    return frame


# --- the measurement, in the child ----------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(started: float, stamps: dict[str, float], **outputs: Any) -> Result:
    """Seconds per stage (imports apart), rows/s over read + rules + balance, peak RSS.

    `cpu_seconds` (user + system, all threads) next to `seconds` shows how much of the
    wall time the process had the CPUs: far less on a machine busy with other work.
    """
    names = list(stamps)
    stages = {"imports": stamps["imports"] - started}
    stages |= {
        later: stamps[later] - stamps[earlier] for earlier, later in itertools.pairwise(names)
    }
    seconds = stamps[names[-1]] - stamps["imports"]
    return {
        "seconds": seconds,
        "rows_per_second": outputs["rows_in"] / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "stages": stages,
        **outputs,
    }


SIDE_FUNCTIONS: dict[str, Callable[[Path, Path], Result]] = {
    "k": kubetune_side,
    "p": pandas_side,
}


def measure(side: str, paths: tuple[Path, Path]) -> Result:
    command = [sys.executable, __file__, "--side", side, "--files", *map(str, paths)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"side {side} failed:\n{result.stderr}")
    last: Result = json.loads(result.stdout.strip().splitlines()[-1])
    return last


# --- the driver -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", choices=sorted(SIDES))
    parser.add_argument("--files", type=Path, nargs=2)
    parser.add_argument("--write-data", type=Path, help="write the files into this folder")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(SIDE_FUNCTIONS[args.side](*args.files)))
        return
    if args.write_data:
        write_data(args.write_data, args.rows)
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        paths = make_data(Path(folder), args.rows)
        runs: dict[str, list[Result]] = {side: [] for side in SIDES}
        for _ in range(args.repeats):
            for side in SIDES:
                runs[side].append(measure(side, paths))
    consistent = compare(runs["k"][0], runs["p"][0])
    load = (load_before, os.getloadavg()[0])
    report({side: median_run(measured) for side, measured in runs.items()}, args, load)
    if not consistent:
        raise SystemExit(1)


def make_data(folder: Path, rows: int) -> tuple[Path, Path]:
    """The files, written by a child process.

    Not here: Linux carries a process's peak RSS over into the ru_maxrss of the children it
    starts (subprocess uses vfork), and making the data takes about 1 GiB at 1M rows.
    """
    started = time.perf_counter()
    command = [sys.executable, __file__, "--write-data", str(folder), "--rows", str(rows)]
    subprocess.run(command, check=True)
    print(f"made the data in {time.perf_counter() - started:.1f} s", flush=True)
    return folder / "train.parquet", folder / "validation.parquet"


def median_run(runs: list[Result]) -> Result:
    """The run of median time, with the highest peak RSS and the range of rows/s of all."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return ordered[len(ordered) // 2] | {
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "rows_per_second_range": [ordered[-1]["rows_per_second"], ordered[0]["rows_per_second"]],
    }


def compare(kubetune: Result, pandas: Result) -> bool:
    """Whether both sides dropped the same rows per rule and kept the same rows per class."""
    same = True
    for what in ("matched", "rows_out", "classes"):
        if kubetune[what] != pandas[what]:
            same = False
            keys = sorted(set(kubetune[what]) | set(pandas[what]))
            print(f"MISMATCH in {what}:")
            for key in keys:
                k, p = kubetune[what].get(key, 0), pandas[what].get(key, 0)
                print(f"  {key:<30} kubetune {k:>9}  pandas {p:>9}{'' if k == p else '  <--'}")
    return same


def report(results: dict[str, Result], args: argparse.Namespace, load: tuple[float, float]) -> None:
    k, p = results["k"], results["p"]
    print(
        f"data pipeline: {k['rows_in']:,} rows in ({args.rows:,} training + validation), "
        f"median of {args.repeats}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after"
    )
    for split, kept in k["rows_out"].items():
        dropped = [
            f"{key.split()[1]} {n}" for key, n in k["matched"].items() if key.startswith(split)
        ]
        print(f"  {split}: {kept:,} rows kept, dropped {', '.join(dropped)}")
    print(f"  balanced training rows per class: {dict(sorted(k['classes'].items()))}")
    print(
        f"  {'side':<13}{'rows/s':>9}{'seconds':>9}{'read':>7}{'rules':>7}{'balance':>8}"
        f"{'CPU s':>7}{'peak RSS MiB':>14}{'imports: s':>12}{'MiB':>6}"
    )
    for side, name in SIDES.items():
        r, stages = results[side], results[side]["stages"]
        print(
            f"  ({side}) {name:<9}{r['rows_per_second']:>9,.0f}{r['seconds']:>9.2f}"
            f"{stages['read']:>7.2f}{stages['rules']:>7.2f}{stages['balance']:>8.2f}"
            f"{r['cpu_seconds']:>7.2f}"
            f"{r['peak_rss_mib']:>14,.0f}{stages['imports']:>12.2f}{r['imports_rss_mib']:>6,.0f}"
        )
    ranges = {side: results[side]["rows_per_second_range"] for side in SIDES}
    shown = ", ".join(f"({side}) {low:,.0f} to {high:,.0f}" for side, (low, high) in ranges.items())
    print(f"  rows/s over the rounds: {shown}")
    ratio = k["rows_per_second"] / p["rows_per_second"]
    verdict("k rows/s", k["rows_per_second"], TARGET_ROWS_PER_SECOND, higher=True)
    verdict("k peak RSS MiB", k["peak_rss_mib"], TARGET_PEAK_RSS_MIB, higher=False)
    verdict("k/p", ratio, TARGET_RATIO, higher=True)


def verdict(label: str, value: float, target: float, *, higher: bool) -> None:
    met = value >= target if higher else value < target
    shown = f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    bound = f"{'>=' if higher else '<'} {target:,}"
    print(f"  {label:<16}{shown:>10}  target {bound:<11} {'PASS' if met else 'MISS'}")


if __name__ == "__main__":
    main()
