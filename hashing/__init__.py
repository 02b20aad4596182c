"""DUCH: model, losses, trainer, hash codes, retrieval index, evaluation and the study.

Takes and returns tensors; never imports `pipelines` or `augment`."""
