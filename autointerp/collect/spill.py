"""Spilling pass 1's sparse SAE codes to a temporary file, so pass 2 need not rerun the model.

On corpora that are not huge compared with d_sae x k, almost every context is some feature's top or
random example, so recomputing the selected contexts costs a second full forward pass. Instead, pass 1
appends every firing (position, feature, activation) entry to a file (10 bytes per entry; a TopK SAE
with k = 32 writes 320 bytes per token) and, at offset 16 x context_id of an index file, the context's
(start, end) entry offsets, so contexts may arrive in any order (length-bucketed batches do not come in
id order). Pass 2 reads back the selected contexts only. RAM stays O(batch); disk grows with the corpus, so the spill stops and is
deleted once it passes `limit_bytes`, and pass 2 then falls back to recomputing. The values read back
are exactly pass 1's, so an example's stored max equals the activation it was ranked by.

Distributed runs (see `shard`): the writing rank creates and owns the folder; every rank writes its own
part (`codes.R.bin`, `index.R.bin`) into it, and pass 2 reads a context from whichever part holds it
(a context is computed by exactly one rank; the other parts' index entries for it are empty).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

import numpy as np
import torch

from autointerp.collect.encode import BatchCodes
from autointerp.collect.spill_owner import SPILL_PREFIX, claim

log = logging.getLogger(__name__)

ENTRY = np.dtype([("position", "<i2"), ("feature", "<i4"), ("value", "<f4")])


def _part_files(directory: Path, part: int) -> tuple[Path, Path]:
    return directory / f"codes.{part}.bin", directory / f"index.{part}.bin"


class CodeSpill:
    def __init__(self, parent: Path | None, limit_bytes: int, part: int = 0, directory: Path | None = None) -> None:
        """A new spill folder in `parent`, owned (and at the end deleted) by this process; or, with
        `directory`, part `part` of a folder another process owns (a non-writing rank)."""
        self.owned = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=parent)) if directory is None else directory
        # see spill_owner: a kill -9 leaves the folder for the next collect to remove
        self._owner = claim(self.directory) if self.owned else None
        self.limit_bytes = limit_bytes
        data, index = _part_files(self.directory, part)
        self._data = data.open("wb")
        self._index = index.open("wb")
        self.entries = 0
        self.active = True

    def add(self, context_ids: torch.Tensor, width: int, codes: BatchCodes) -> None:
        """Append a batch's entries; contexts may come in any order, each once (single process)."""
        if not self.active:
            return
        ids = context_ids.cpu().numpy().astype(np.int64)
        if width > np.iinfo(np.int16).max:
            self.abandon("contexts are too long for the spill format")
            return
        if codes.tokens is None:
            self.abandon("the codes carry no token positions")
            return
        tokens = codes.tokens.cpu().numpy()
        rows = tokens // width
        order = np.argsort(rows, kind="stable")
        entries = np.empty(len(order), dtype=ENTRY)
        entries["position"] = (tokens % width)[order]
        entries["feature"] = codes.features.cpu().numpy()[order]
        entries["value"] = codes.values.to(torch.float32).cpu().numpy()[order]
        counts = np.bincount(rows, minlength=len(ids))
        ends = self.entries + np.cumsum(counts)
        bounds = np.stack([ends - counts, ends], axis=1).astype("<i8")
        self._data.write(entries.tobytes())
        fd = self._index.fileno()
        for context_id, record in zip(ids.tolist(), bounds, strict=True):
            os.pwrite(fd, record.tobytes(), context_id * 16)
        self.entries += len(entries)
        if self.entries * ENTRY.itemsize > self.limit_bytes:
            self.abandon(f"it passed the spill limit of {self.limit_bytes / 2**30:.1f} GiB")

    def abandon(self, why: str) -> None:
        if self.active:
            log.info("not spilling SAE codes any more (%s); pass 2 will recompute the selected contexts", why)
        self.active = False
        self.close()

    def close(self) -> None:
        for handle in (self._data, self._index):
            if not handle.closed:
                handle.close()

    def cleanup(self) -> None:
        """Close this part; the owner also deletes the folder (after every part's reader is done)."""
        self.close()
        if self._owner is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self._owner.close()  # after the folder is gone, so no cleaner sees it unlocked

    def reader(self, d_sae: int, parts: int = 1) -> SpillReader | None:
        """A reader over parts 0..parts-1 (every rank's), or None when this part stopped spilling."""
        self.close()
        return SpillReader(self.directory, d_sae, parts) if self.active else None


class SpillReader:
    def __init__(self, directory: Path, d_sae: int, parts: int = 1) -> None:
        self.d_sae = d_sae
        files = [_part_files(directory, part) for part in range(parts)]
        self._parts = [(data.open("rb"), index.open("rb")) for data, index in files]

    @staticmethod
    def _bounds(index: IO[bytes], context_id: int) -> tuple[int, int]:
        index.seek(context_id * 16)
        raw = index.read(16)
        if len(raw) < 16:  # past the end of this part's index: another part holds the context
            return 0, 0
        start, end = np.frombuffer(raw, dtype="<i8")
        return int(start), int(end)

    def entries(self, context_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each entry in `context_ids`, the entries) for the given contexts, as pass 1 spilled them."""
        parts, rows = [], []
        for row, context_id in enumerate(context_ids.tolist()):
            for data, index in self._parts:  # unwritten index entries read as (0, 0): no entries there
                start, end = self._bounds(index, int(context_id))
                if end == start:
                    continue
                data.seek(start * ENTRY.itemsize)
                parts.append(np.frombuffer(data.read((end - start) * ENTRY.itemsize), dtype=ENTRY))
                rows.append(np.full(end - start, row, dtype=np.int64))
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=ENTRY)
        return np.concatenate(rows), np.concatenate(parts)

    def close(self) -> None:
        for data, index in self._parts:
            data.close()
            index.close()
