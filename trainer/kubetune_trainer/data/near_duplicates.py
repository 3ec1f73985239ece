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
    trigram (three words or more); the others' signatures mean nothing."""
    trigrams, owners = _trigrams(prompts)
    count = len(prompts)
    shingled = np.bincount(owners, minlength=count) > 0
    signatures = np.full((count, HASHES), np.iinfo(np.uint64).max, dtype=np.uint64)
    if not len(trigrams):
        return signatures, shingled
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    present = owners[starts]
    multipliers, offsets = _hash_functions()
    for k in range(HASHES):
        values = _mixed(trigrams * multipliers[k] + offsets[k])
        signatures[present, k] = np.minimum.reduceat(values, starts)
    return signatures, shingled


def _trigrams(prompts: pa.ChunkedArray) -> tuple[Hashes, Codes]:
    """A hash per word trigram of every prompt, and the prompt each belongs to (ascending)."""
    words = pc.split_pattern(prompts.combine_chunks(), " ")
    owners = np.asarray(pc.list_parent_indices(words).to_numpy(zero_copy_only=False), np.int64)
    encoded = pc.dictionary_encode(pc.list_flatten(words))
    word_codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), np.int64)
    rng = np.random.default_rng(SEED)
    word_hashes = rng.integers(0, np.iinfo(np.int64).max, len(encoded.dictionary), np.int64)
    hashes = word_hashes.astype(np.uint64)[word_codes]
    same_prompt = owners[:-2] == owners[2:]
    with np.errstate(over="ignore"):
        combined = (hashes[:-2] * _PRIME + hashes[1:-1]) * _PRIME + hashes[2:]
    return combined[same_prompt], owners[:-2][same_prompt]


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
        block = signatures[:, band * width : (band + 1) * width]
        _, first, inverse = np.unique(block, axis=0, return_index=True, return_inverse=True)
        earlier = first[inverse.ravel()]
        later = np.flatnonzero(earlier != np.arange(count))
        similarity = (signatures[later] == signatures[earlier[later]]).mean(axis=1)
        near[later[similarity >= threshold]] = True
    return near
