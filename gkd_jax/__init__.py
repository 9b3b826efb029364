"""On-policy knowledge distillation (GKD, Agarwal et al. 2024) of language models in JAX/Flax NNX.

The commands are the modules at this level (`python -m gkd_jax.train | evaluate | plan |
teacher_cache | teacher_replies | export`); the subpackages are the stages of the data flow:

  config/       fields and defaults, the `:arg` parser, start-up checks, loading a config file,
                how a command starts and reports a user's error (cli.py)
  data/         tasks, tokenizers and batches (never imports models/)
  models/       model families, the functional view, Hugging Face checkpoints
  decoding/     the protocol a family provides, the jitted sampler, beam search
  objectives/   the GKD divergences, their memory-lean forms, sparse teachers, policy gradient
  training/     the loop (trainer.py), the jitted steps, optimizer, checkpoints, preemption
  evaluation/   decoding and scoring a split, metrics, reply statistics, held-out benchmarks
  planning/     will a run fit: the TPU compiler on abstract shapes
  parallel/     the device mesh, partition rules, multi-host start-up, libtpu quiet without a TPU
"""
