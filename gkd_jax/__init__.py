"""On-policy knowledge distillation (GKD, Agarwal et al. 2024) of language models in JAX/Flax NNX.

One file per stage of the data flow: config (config_defaults, config_checks, config_arg) -> task
(data/) -> batches (data/pipeline) -> sampler (sampling, beam_search over decoding's pair) ->
teacher / student scores (models/) -> loss and update (step) -> checkpoint -> evaluation;
trainer.py runs the loop, train.py is the command line. README "Layout" lists every module.
"""
