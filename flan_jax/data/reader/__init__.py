"""The Grain training reader: random-access sources, mixing by index, packing, workers.

A global example index maps to (task, row) by the mixture's rates (`mixture.py`), rows are
rendered and tokenized in Grain worker processes a chunk at a time and packed into seqio's
EncDecFeatureConverter features (`packing.py`), and the host assembles batches from its
own shards with a state of a few numbers per shard (`pipeline.py`). Nothing here grows with
the number of tasks beyond a small record per task, or with the step a run resumes from.
"""
