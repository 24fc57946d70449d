"""The classifier: one batch of whole lines -> record lines (per shape), print_regs() dumps
(attached to their record), and the other lines in order (tags, messages, damage)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..wire import _DUMP_PREFIXES, _DUMP_RES, DUMP_LINES, MAX_FOREIGN_IN_DUMP
from ..wire import RECORD_PREFIX_B as _PREFIX
from ..wire import RECORD_SUFFIX_B as _SUFFIX
from ..wire import RECORD_TAG_B as RECORD_TAG
from .columns import I64
from .plan import Plan


@dataclass
class Lines:
    """A batch's line index: line j is buf[starts[j]:cend[j]] (without \\r\\n), nl[j] its
    newline."""

    buf: bytes
    a: npt.NDArray[np.uint8]
    starts: I64
    cend: I64
    nl: I64
    n: int

    def line(self, j: int) -> bytes:
        return self.buf[int(self.starts[j]) : int(self.cend[j])]


@dataclass
class Classified:
    lines: Lines
    others: list[tuple[int, bytes, bool]]  # (line, text, damaged) of the non-record lines
    by_shape: list[tuple[int, I64]]  # (shape, its record lines)
    regs: dict[int, tuple[int, ...]]  # record line -> its dump's register values
    consumed: int  # bytes of buf classified (the rest waits)


class Classifier:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def classify(self, buf: bytes, final: bool, last_partial: bool) -> Classified:
        """Index the lines of `buf` (whole lines) with numpy and sort them: record lines by
        shape, print_regs() dump lines to their record, the rest in order."""
        a = np.frombuffer(buf, dtype=np.uint8)
        nl = np.flatnonzero(a == 10).astype(np.int64)
        n = int(nl.size)
        starts = np.empty_like(nl)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        has_cr = (nl > starts) & (a[np.maximum(nl - 1, 0)] == 13)
        cend = nl - has_cr
        last = a.size - 1
        cand = (cend - starts) >= 9
        for k, ch in enumerate(_PREFIX):
            cand &= a[np.minimum(starts + k, last)] == ch
        for k, ch in enumerate(_SUFFIX):
            cand &= a[np.maximum(cend - 3 + k, 0)] == ch
        if int(np.count_nonzero(a == 13)) != int(np.count_nonzero(has_cr)):
            crpos = np.flatnonzero(a == 13)
            ln = np.searchsorted(nl, crpos, side="left")
            cand[ln[crpos != cend[ln]]] = False  # a \r inside the line
        if b"\0" in buf:
            cand[np.searchsorted(nl, np.flatnonzero(a == 0), side="left")] = False
        if last_partial:
            cand[n - 1] = False
        # probe index: 1 to 3 digits between the first and the second tab
        p = np.minimum(starts + 6, last)
        d = [a[np.minimum(p + k, last)].astype(np.int64) - 48 for k in range(3)]
        isdig = [(x >= 0) & (x <= 9) for x in d]
        tab = [a[np.minimum(p + k, last)] == 9 for k in range(1, 4)]
        idx = np.full(n, -1, dtype=np.int64)
        one = isdig[0] & tab[0]
        two = isdig[0] & isdig[1] & tab[1]
        three = isdig[0] & isdig[1] & isdig[2] & tab[2]
        idx[one] = d[0][one]
        idx[two] = (d[0] * 10 + d[1])[two]
        idx[three] = (d[0] * 100 + d[1] * 10 + d[2])[three]
        idx[~cand] = -1
        bad_idx = cand & ((idx < 0) | (idx >= len(self.plan.schemas)))
        # kind per line: 0 other, 1 record candidate, 2 damaged already
        kind = np.zeros(n, dtype=np.int8)
        kind[cand] = 1
        kind[bad_idx] = 2
        idx[bad_idx] = -1

        def line(j: int) -> bytes:
            return buf[int(starts[j]) : int(cend[j])]

        cut = n
        regs: dict[int, tuple[int, ...]] = {}
        dump_lines: set[int] = set()
        if self.plan.any_regs:
            cut = self._match_dumps(kind, idx, line, n, final, regs, dump_lines)

        others: list[tuple[int, bytes, bool]] = [
            (j, line(j), kind[j] == 2)
            for j in np.flatnonzero(kind[:cut] != 1).tolist()
            if j not in dump_lines
        ]
        by_shape: list[tuple[int, I64]] = []
        rec_lines = np.flatnonzero(kind[:cut] == 1)
        if rec_lines.size:
            shape_ids = self.plan.shape_of[idx[rec_lines]]
            for sid in np.unique(shape_ids).tolist():
                gl = rec_lines[shape_ids == sid] if len(self.plan.shapes) > 1 else rec_lines
                by_shape.append((sid, gl))
        return Classified(
            Lines(buf, a, starts, cend, nl, n),
            others,
            by_shape,
            regs,
            int(nl[cut - 1]) + 1 if cut > 0 else 0,
        )

    def _match_dumps(
        self,
        kind: npt.NDArray[np.int8],
        idx: I64,
        line: Callable[[int], bytes],
        n: int,
        final: bool,
        regs: dict[int, tuple[int, ...]],
        dump_lines: set[int],
    ) -> int:
        """Find the print_regs() dump after each record of a print_regs probe: the next 10
        dump lines in order, other output (at most MAX_FOREIGN_IN_DUMP lines, none of them a
        record, a damaged line or a dump line out of order) may come between them. Returns
        the line to hold back from (n: nothing held back)."""
        rec = np.flatnonzero((kind == 1) & self.plan.regs_probe[np.maximum(idx, 0)])
        for r in rec.tolist():
            k = 0
            foreign = 0
            vals: list[int] = []
            taken: list[int] = []
            j = r + 1
            while k < DUMP_LINES:
                if j >= n:
                    if final:
                        break
                    return r
                if kind[j] != 0:
                    break
                t = line(j)
                if RECORD_TAG in t:
                    break
                m = _DUMP_RES[k].match(t)
                if m is not None:
                    vals.extend(int(g, 16) for g in m.groups())
                    taken.append(j)
                    k += 1
                elif t.startswith(_DUMP_PREFIXES):
                    break
                else:
                    foreign += 1
                    if foreign > MAX_FOREIGN_IN_DUMP:
                        break
                j += 1
            if k == DUMP_LINES:
                regs[r] = tuple(vals)
                dump_lines.update(taken)
        return n
