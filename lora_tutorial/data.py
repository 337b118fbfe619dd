"""SST-2: loading (Hub or a local GLUE folder), tokenization, and length-grouped batches."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from torch.utils.data import Sampler
from transformers import PreTrainedTokenizerBase

from .errors import UsageError

ENV_VAR = "LORA_TUTORIAL_SST2"
HUB_ID = "stanfordnlp/sst2"
SPLITS = ("train", "validation")
FEATURES = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})


def read_tsv(path: str | Path) -> Dataset:
    """Read a GLUE-style ``sentence<TAB>label`` file (header line, no quoting), checking every line."""
    path = Path(path)
    sentences, labels = [], []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is fine
            except UnicodeDecodeError as e:
                raise UsageError(
                    f"{path}:{lineno}: byte {raw[e.start]:#04x} at column {e.start + 1} is not UTF-8; "
                    "save the file as UTF-8."
                ) from None
            fields = line.rstrip("\r\n").split("\t")
            if lineno == 1:
                if fields != ["sentence", "label"]:
                    raise UsageError(f"{path}:1: expected the header 'sentence<TAB>label', got {fields!r}.")
                continue
            if len(fields) != 2:
                raise UsageError(
                    f"{path}:{lineno}: expected 'sentence<TAB>label' (2 fields), got {len(fields)}."
                )
            if fields[1] not in ("0", "1"):
                raise UsageError(f"{path}:{lineno}: label {fields[1]!r} is not 0 or 1.")
            sentences.append(fields[0])
            labels.append(int(fields[1]))
    if not sentences:
        raise UsageError(f"{path}: the split is empty (no examples after the header).")
    return Dataset.from_dict({"sentence": sentences, "label": labels}, features=FEATURES)


def fingerprint(split: Dataset) -> str:
    """A SHA-256 of a split's examples in order (its sentences, or once tokenized its token ids) and
    labels: which data a run actually saw."""
    digest = hashlib.sha256()
    column = "sentence" if "sentence" in split.column_names else "input_ids"
    for x, label in zip(split[column], split["label"]):
        digest.update(f"{x}\t{label}\n".encode())
    return digest.hexdigest()


def load_sst2(source: str | Path | None = None) -> DatasetDict:
    """SST-2 with ``train`` and ``validation`` splits (columns ``sentence``, ``label``).

    ``source``: a folder holding ``train.tsv`` and ``validation.tsv``, or ``"hub"``. When not given,
    the folder named by the ``LORA_TUTORIAL_SST2`` environment variable, else the Hub.
    """
    if source is None:
        source = os.environ.get(ENV_VAR, "hub")
        if not source.strip():
            raise UsageError(
                f"{ENV_VAR} is set but empty; set it to the SST-2 folder, or unset it to use the Hub."
            )
    if str(source) == "hub":
        return _load_from_hub()
    folder = Path(source)
    if folder.is_file():
        raise UsageError(
            f"{folder} is a file; SST-2 is read from the folder that holds train.tsv and validation.tsv "
            f"(e.g. {folder.parent})."
        )
    if not folder.is_dir():
        raise UsageError(
            f"SST-2 folder {folder} does not exist; pass a folder with train.tsv and "
            f"validation.tsv (or set {ENV_VAR}), or source='hub'. A relative path is read from "
            f"the current directory, {Path.cwd()} (chapters run in book/): give an absolute one."
        )
    missing = [f"{s}.tsv" for s in SPLITS if not (folder / f"{s}.tsv").is_file()]
    if missing:
        raise UsageError(
            f"SST-2 folder {folder} lacks {', '.join(missing)}; it needs train.tsv and validation.tsv."
        )
    return DatasetDict({s: read_tsv(folder / f"{s}.tsv") for s in SPLITS})


def _load_from_hub() -> DatasetDict:
    from datasets import load_dataset

    try:
        ds = load_dataset(HUB_ID)
    except Exception as e:  # datasets raises several kinds (ConnectionError, OSError, HfHubHTTPError...)
        raise UsageError(
            f"Could not download SST-2 from the Hugging Face Hub ({e.__class__.__name__}). "
            f"Either connect to the internet, or use a local GLUE SST-2 folder with train.tsv "
            f"and validation.tsv: load_sst2('/path/to/sst2') or export {ENV_VAR}=/path/to/sst2."
        ) from e
    return DatasetDict({s: ds[s].select_columns(["sentence", "label"]).cast(FEATURES) for s in SPLITS})


def tokenize(data: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int = 128) -> DatasetDict:
    """Token ids per sentence, unpadded (padding happens per batch), plus a ``length`` column."""

    def encode(batch):
        enc = tokenizer(batch["sentence"], truncation=True, max_length=max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    return data.map(encode, batched=True, remove_columns=["sentence"], desc="tokenizing")


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of similar length: shuffle, cut into chunks of ``chunk`` batches, sort each chunk by
    length, split into batches, shuffle the batch order. With ``shuffle=False``: sorted, for evaluation.
    Each pass over it draws a new order from ``seed`` and the pass number, so runs are reproducible."""

    def __init__(
        self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0, chunk: int = 64
    ) -> None:
        self.lengths, self.batch_size, self.shuffle, self.seed, self.chunk = (
            list(lengths),
            batch_size,
            shuffle,
            seed,
            chunk,
        )
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=self.lengths.__getitem__)
            yield from (order[i : i + size] for i in range(0, n, size))
            return
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        perm = torch.randperm(n, generator=g).tolist()
        span = size * self.chunk
        batches = []
        for start in range(0, n, span):
            group = sorted(perm[start : start + span], key=self.lengths.__getitem__, reverse=True)
            batches += [group[i : i + size] for i in range(0, len(group), size)]
        yield from (batches[i] for i in torch.randperm(len(batches), generator=g).tolist())


def padding_fraction(lengths: Sequence[int], batches: Iterator[list[int]]) -> float:
    """Share of the tokens in padded batches that are padding."""
    real = padded = 0
    for batch in batches:
        lens = [lengths[i] for i in batch]
        real += sum(lens)
        padded += max(lens) * len(lens)
    return 1 - real / padded


def random_batches(n: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Plain shuffled batches, the baseline that length grouping is compared against."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]
