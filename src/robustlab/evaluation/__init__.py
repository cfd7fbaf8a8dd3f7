"""The evaluation engine and its leaves: passes and worst case, the run record, audit, figures, TensorBoard."""
