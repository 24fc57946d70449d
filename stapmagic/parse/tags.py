"""The tag reader: the non-record lines of the stream, in order. `@@smh` ... `@@smh-end`
blocks become histograms, `@@sms` summaries, `@@smc`/`@@smk` tag counts; a tagged line that
is not what the script prints is damaged; everything else is a message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..hist import hist_kind, parse_hist_block, parse_summary
from ..schema import ColumnKind
from ..wire import _TAG_NAME_RE, parse_tag_count
from ..wire import COUNTER_TAG_B as _COUNTER_TAG
from ..wire import HIST_END_B as _HIST_END
from ..wire import HIST_TAG_B as _HIST_TAG
from ..wire import KEYS_TAG_B as _KEYS_TAG
from ..wire import RECORD_TAG_B as RECORD_TAG
from ..wire import SUMMARY_TAG_B as _SUMMARY_TAG
from .batch import Output


@dataclass
class _HistBlock:
    name: str
    kind: str
    lines: list[bytes]
    tag: bytes  # the @@smh line


class TagReader:
    """key_kinds: the `@@smk` key kind per probe label (a label not in it: text)."""

    def __init__(self, out: Output, key_kinds: Mapping[str, ColumnKind]) -> None:
        self.out = out
        self.key_kinds = dict(key_kinds)
        self._block: _HistBlock | None = None

    def close(self) -> None:
        """End of output: an unterminated histogram block is given back as messages."""
        if self._block is not None:
            block, self._block = self._block, None
            self.out.message(block.tag)
            for ln in block.lines:
                self.out.message(ln)

    def line(self, t: bytes, damaged: bool) -> None:
        """A line that is not a row, in order: hist block, summary, damaged or message."""
        if damaged or RECORD_TAG in t:
            self.out.damage(t)
            return
        if self._block is not None:
            if t.startswith(_HIST_END):
                block, self._block = self._block, None
                text = b"\n".join(block.lines).decode("utf-8", "backslashreplace") + "\n"
                try:
                    h = parse_hist_block(text, block.name, block.kind or None)
                except ValueError:
                    # the tags say it is a histogram, the text is not one: the tag lines
                    # are damaged, stap's text between them stays readable
                    self.out.damage(block.tag)
                    for ln in block.lines:
                        self.out.message(ln)
                    self.out.damage(t)
                    return
                self.out.histogram(h)
            else:
                self._block.lines.append(t)
            return
        if t.startswith(_HIST_TAG):
            parts = t.rstrip(b"\r").split(b"\t")
            if parts[-1] == b"@@":
                parts = parts[:-1]
            try:
                if len(parts) != 3 or _TAG_NAME_RE.match(parts[1]) is None:
                    raise ValueError("not @@smh <TAB> name <TAB> kind")
                name, hkind = parts[1].decode(), parts[2].decode("ascii")
                hist_kind(hkind)
            except ValueError:
                self.out.damage(t)
                return
            self._block = _HistBlock(name, hkind, [], t)
            return
        if t.startswith(_HIST_END):
            self.out.damage(t)  # an end without its start
            return
        if t.startswith(_SUMMARY_TAG):
            try:
                s = parse_summary(t.decode("utf-8", "backslashreplace"))
            except ValueError:
                self.out.damage(t)
                return
            self.out.summary(s)
            return
        if t.startswith(_COUNTER_TAG) or t.startswith(_KEYS_TAG):
            name = t.split(b"\t", 2)[1].decode("utf-8", "replace")
            try:
                self.out.tag_count(parse_tag_count(t, self.key_kinds.get(name)))
            except ValueError:
                self.out.damage(t)
            return
        self.out.message(t)
