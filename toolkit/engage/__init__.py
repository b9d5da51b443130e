"""Segment side: readers for every Engage export shape, the EngageExport model, validation."""
