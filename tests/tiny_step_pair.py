"""The tiny student/teacher pair and random batch that the step tests (test_rl_step.py,
test_sparse_teacher.py) run: V = 32 divides over tensor = 2."""

import numpy as np

from gkd_jax.models import DecoderConfig, build_decoder, functional_lm

V = 32
STUDENT = DecoderConfig(V, 16, 1, 4, 2, 32)
TEACHER = DecoderConfig(V, 32, 2, 4, 2, 64)


def models():
    params, s_fns = functional_lm(build_decoder(STUDENT, seed=1))
    t_params, t_fns = functional_lm(build_decoder(TEACHER, seed=2))
    return params, s_fns, t_params, t_fns


def random_batch(seed=0, b=16, p=6, n=5, rewards=True):
    """Prompts and completions as the sampler gives them: every completion has >= 1 token;
    rewards [b] for the policy-gradient step (drawn last: the other arrays do not depend on it)."""
    rng = np.random.default_rng(seed)
    prompt_mask = np.arange(p)[None] >= (p - rng.integers(1, p + 1, b))[:, None]
    completion_mask = np.arange(n)[None] < rng.integers(1, n + 1, b)[:, None]
    batch = dict(
        prompt=np.where(prompt_mask, rng.integers(3, V, (b, p)), 0).astype(np.int32),
        prompt_mask=prompt_mask,
        completion=np.where(completion_mask, rng.integers(3, V, (b, n)), 0).astype(np.int32),
        completion_mask=completion_mask,
    )
    if rewards:
        batch["rewards"] = rng.normal(size=b).astype(np.float32) + 1.0
    return batch
