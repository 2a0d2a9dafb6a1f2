"""The Wide & Deep model: Wide (linear over sparse ids and crosses), Deep (embeddings + MLP), WideDeep (joint; returns logits)."""

from widedeep.model.deep import MLP, Deep, EmbeddingSlot
from widedeep.model.tables import OffsetTable, SlotRows
from widedeep.model.wide import Wide
from widedeep.model.wide_deep import WideDeep

__all__ = ["MLP", "Deep", "EmbeddingSlot", "OffsetTable", "SlotRows", "Wide", "WideDeep"]
