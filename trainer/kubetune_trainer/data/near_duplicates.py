"""Near-duplicate prompts: the same request with a word or two changed.

Generated and scraped instruction data repeats itself from templates ("Translate to
French: ..." with one word swapped), and such rows weigh more than the others just as
exact copies do, but the duplicates rule, comparing whole normalised texts, cannot see
them. This is the data.quality.nearDuplicates rule's algorithm: two prompts are near when
the sets of their word trigrams overlap by at least a threshold (Jaccard similarity), as
MinHash estimates it (Broder 1997), with locality-sensitive hashing (bands of the MinHash
signature) so that only prompts sharing a band are compared, never every pair.

It works on whole columns: the words are hashed once per distinct word, the trigrams and
their minima per prompt are numpy operations over all the words of a split, and the bands
are grouped with numpy's unique. Like the quality engine, it knows no file or tokenizer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

HASHES = 64
"""MinHash functions per prompt: the similarity estimate's standard error is at most 1/16."""
BANDS = 16
"""Locality-sensitive hashing bands of HASHES // BANDS hashes: prompts with Jaccard
similarity 0.8 share a band with probability 1 - (1 - 0.8**4)**16, over 0.9999."""
SEED = 20_240_601
PROMPTS_PER_BATCH = 65_536
Mask = npt.NDArray[np.bool_]
Codes = npt.NDArray[np.int64]
Hashes = npt.NDArray[np.uint64]
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_PRIME = np.uint64(0x9E3779B97F4A7C15)


def near_duplicates(
    prompts: pa.ChunkedArray, codes: Codes, candidates: Mask, threshold: float
) -> Mask:
    """Candidate rows whose normalised prompt (`codes`: the same integer for the same
    prompt) is near, and not equal, to an earlier candidate's: all rows of that prompt."""
    rows = np.flatnonzero(candidates)
    _, first = np.unique(codes[rows], return_index=True)
    representatives = rows[np.sort(first)]
    signatures, shingled = _signatures(prompts.take(pa.array(representatives)))
    near = _near_an_earlier(signatures[shingled], threshold)
    near_codes = codes[representatives[np.flatnonzero(shingled)[near]]]
    return candidates & np.isin(codes, near_codes)


def _signatures(prompts: pa.ChunkedArray) -> tuple[Hashes, Mask]:
    """Each prompt's MinHash signature over its word trigrams, and which prompts have a
    trigram (three words or more); the others' signatures mean nothing. The words are
    hashed once; the trigrams are made PROMPTS_PER_BATCH prompts at a time, so that memory
    stays bounded on long conversations."""
    words = pc.split_pattern(prompts.combine_chunks(), " ")
    offsets = np.asarray(words.offsets.to_numpy(zero_copy_only=False), np.int64)
    hashes = _word_hashes(pc.list_flatten(words))
    count = len(prompts)
    signatures = np.full((count, HASHES), np.iinfo(np.uint64).max, dtype=np.uint64)
    shingled = np.zeros(count, dtype=np.bool_)
    functions = _hash_functions()
    for start in range(0, count, PROMPTS_PER_BATCH):
        stop = min(start + PROMPTS_PER_BATCH, count)
        batch_offsets = offsets[start : stop + 1]
        batch_hashes = hashes[batch_offsets[0] : batch_offsets[-1]]
        trigrams, owners = _trigrams(batch_hashes, np.diff(batch_offsets))
        shingled[start:stop] = np.bincount(owners, minlength=stop - start) > 0
        _minimum_hashes(trigrams, owners, functions, signatures[start:stop])
    return signatures, shingled


def _word_hashes(words: pa.Array) -> Hashes:
    """A random 64-bit hash per word, the same for the same word (one per distinct word)."""
    encoded = pc.dictionary_encode(words)
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), np.int64)
    rng = np.random.default_rng(SEED)
    distinct = rng.integers(0, np.iinfo(np.int64).max, len(encoded.dictionary), np.int64)
    hashes: Hashes = distinct.astype(np.uint64)[codes]
    return hashes


def _trigrams(hashes: Hashes, lengths: Codes) -> tuple[Hashes, Codes]:
    """A hash per word trigram of consecutive prompts (`lengths` words each, their word
    `hashes` one after the other), and the prompt each belongs to (ascending)."""
    owners = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    same_prompt = owners[:-2] == owners[2:]
    with np.errstate(over="ignore"):
        combined = (hashes[:-2] * _PRIME + hashes[1:-1]) * _PRIME + hashes[2:]
    return combined[same_prompt], owners[:-2][same_prompt]


def _minimum_hashes(
    trigrams: Hashes, owners: Codes, functions: tuple[Hashes, Hashes], signatures: Hashes
) -> None:
    """Fill each owner's row of `signatures` with the minimum of every hash function over
    its trigrams (owners without a trigram keep theirs)."""
    if not len(trigrams):
        return
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    present = owners[starts]
    multipliers, offsets = functions
    for k in range(HASHES):
        values = _mixed(trigrams * multipliers[k] + offsets[k])
        signatures[present, k] = np.minimum.reduceat(values, starts)


def _hash_functions() -> tuple[Hashes, Hashes]:
    """HASHES odd multipliers and offsets: each (x * m + o) is a permutation of uint64."""
    rng = np.random.default_rng(SEED + 1)
    multipliers = rng.integers(0, np.iinfo(np.int64).max, HASHES, np.int64).astype(np.uint64)
    offsets = rng.integers(0, np.iinfo(np.int64).max, HASHES, np.int64).astype(np.uint64)
    return multipliers | np.uint64(1), offsets


def _mixed(values: Hashes) -> Hashes:
    """SplitMix64's finaliser: every input bit moves every output bit."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(31))
        values = values * _MIX
        return values ^ (values >> np.uint64(29))


def _near_an_earlier(signatures: Hashes, threshold: float) -> Mask:
    """Signatures whose share of equal hashes with an earlier one sharing a band is at least
    `threshold` (compared with the band's first member)."""
    count = len(signatures)
    near = np.zeros(count, dtype=np.bool_)
    if count < 2:
        return near
    width = HASHES // BANDS
    for band in range(BANDS):
        _, first, inverse = np.unique(
            _band_keys(signatures[:, band * width : (band + 1) * width]),
            return_index=True,
            return_inverse=True,
        )
        earlier = first[inverse]
        later = np.flatnonzero(earlier != np.arange(count))
        similarity = (signatures[later] == signatures[earlier[later]]).mean(axis=1)
        near[later[similarity >= threshold]] = True
    return near


def _band_keys(block: Hashes) -> Hashes:
    """One 64-bit key per row of a band: rows with the same hashes share it (other rows
    only by a chance of about one in 2**64, and the similarity check follows anyway)."""
    keys = np.zeros(len(block), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in block.T:
            keys = _mixed(keys * _PRIME + column)
    return keys
