"""Teacher labelling: distil a teacher encoder into word-level pseudo-labels for NER pre-finetuning.

Pipeline (``mtpf label``): read a corpus as words (:mod:`.corpus`), embed each word as the mean of the
teacher's sub-token vectors (:mod:`.embed`), fit mini-batch k-means on a bounded sample and assign every word
its nearest centroid (:mod:`.cluster`), write resumable JSONL shards + ``clusters.json`` (:mod:`.label`).
"""
