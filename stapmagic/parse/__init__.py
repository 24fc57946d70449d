"""The record parser, one module per concern (what stapmagic.records re-exports):

plan.py        schemas -> shapes, output columns and their stores (once)
linebuffer.py  chunks -> batches of whole lines; overlong lines cut, never held whole
classify.py    a batch's lines -> record lines per shape, print_regs dumps, the others
engine.py      the engine interface (Parsed) behind which:
  compiled.py    _recscan.c, one strict pass (optional)
  arrow.py       pyarrow's CSV reader plus vectorized checks
  reference.py   wire.parse_record, per line
columns.py     the rows' columns (contiguous numeric arrays) and their assembly
tags.py        the non-record lines: histograms, summaries, tag counts, messages
batch.py       Output (messages, damage, tags; bounded) and Batch, what flush() returns
parser.py      RecordParser, which composes them
"""
