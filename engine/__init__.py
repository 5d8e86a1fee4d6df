"""The lifelong training engine: one stage learns one more domain.

A stage of order ``NKS`` learns S on top of the model of ``NK`` (``runs/NK.pth.tar``):

1. load the prior model, keep a frozen copy as the teacher, append a head for the new domain;
2. train the new head (and the shared trunk) on the new domain with the uncertainty depth loss;
3. distil every old head on the new domain's images against the teacher;
4. replay each old domain's buffer through its own head with the uncertainty depth loss;
5. sum the terms with per-domain weights.

Strategies switch terms 3 and 4 on and off (``finetune``, ``distill``, ``replay``) or train on all
domains at once (``joint``, the upper bound). The same code runs one process or many under
torchrun (DistributedDataParallel), on CPU or CUDA.

Modules: ``options`` (``StageOptions``, the settings of a stage, their resolution and checks),
``processes`` (device, torchrun ranks, stop signals, seeds, mixed precision), ``sampling``
(samplers, replay streams, validation rows, a domain's datasets), ``model`` (prior, student,
teacher, fresh heads), ``stage`` (the loss terms and the training loop), ``run`` (the run folder
and ``train_stage``, the entry of train_N.py / train_NK.py / train_NKS.py through cli/train.py).
The one map from ``--protocol ours|authors`` to the individual options is ``base.protocol``.
"""
