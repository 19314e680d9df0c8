"""Representation analysis of pre-finetuned encoders (paper Section 5, Figures 3-5; Section 6, Figure 4).

* ``perturb``    entity-replaced variants of NER sentences (Figure 5)
* ``similarity`` Finding 1 (perturbed-sentence cosine) and Finding 2 (intra-sentence token homogeneity)
* ``track``      ``Tracker``: both findings on any model, cached inputs, used during ``mtpf pretrain``
* ``plots``      Figure 3 (trends per run) and Figure 4 (TPL depth sweep)
* ``cli``        ``mtpf analyze``
"""
