"""The full set of config fields with defaults; configs/*.py start from `base_config()`.

Every field a user can set exists here, so `lock_config=True` turns a typo into an error.
"""

from __future__ import annotations

import ml_collections

# The arith task's models: teacher ~0.8M parameters, student ~60k (the reference pair).
ARITH_TEACHER = dict(
    hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384
)
ARITH_STUDENT = dict(
    hidden_size=48, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128
)


# config.lora.targets' default (models/lora.py): the attention and MLP projections, decoder
# (self_attn/q_proj .. o_proj, mlp/gate_proj, up_proj, down_proj) and T5 (SelfAttention and
# EncDecAttention q/k/v/o, DenseReluDense wi / wi_0 / wi_1 / wo).
LORA_TARGETS = (
    r"(self_attn/[qkvo]_proj|mlp/(gate|up|down)_proj|Attention/[qkvo]"
    r"|DenseReluDense/(wi|wi_0|wi_1|wo))$"
)


def finite_training_set(c: ml_collections.ConfigDict, n: int | None) -> None:
    """The first n problems of training seed 0 for every run (teacher, SFT student and every
    distillation seed see the same set; a smaller n is a prefix of a larger one)."""
    if n is not None:
        c.data.train_examples, c.data.train_seed = n, 0


def model_config(**fields) -> ml_collections.ConfigDict:
    """A decoder shape (fields of gkd_jax.models.DecoderConfig)."""
    return ml_collections.ConfigDict(
        dict(
            vocab_size=99,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=192,
            head_dim=None,
            rope_theta=10_000.0,
            rms_norm_eps=1e-6,
            tie_embeddings=True,
            qkv_bias=False,
        )
        | fields,
        type_safe=False,
    )


def model_source(
    checkpoint: str = "", recipe: str = "", layers: str = "", tokenizer: str = "", **model
) -> ml_collections.ConfigDict:
    """Where a model comes from: a checkpoint dir ('' = WORKDIR/NAME/model, 'builtin:...' =
    shipped in the package); `recipe` = a config file that trains it there if it is missing.
    `layers`: config.init only, `tokenizer`: config.teacher only (base_config's comments).
    `model` fields give its shape (the teacher's; the student's start takes config.model)."""
    # Every source has `layers` and `tokenizer`, so a config that replaces c.init or c.teacher
    # keeps the flags settable (`--config.teacher.tokenizer=...` on configs/chat.py).
    source = dict(checkpoint=checkpoint, recipe=recipe, layers=layers, tokenizer=tokenizer)
    if model:
        source["model"] = model_config(**model)
    return ml_collections.ConfigDict(source)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "arith"
    c.objective = "gkd"  # "gkd" (distill from config.teacher) or "sft" (cross-entropy on data)
    c.seed = 0
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16"
    # Memory (docs/guides/memory.md; `python -m gkd_jax.plan` measures each choice on a TPU slice):
    # the student's master weights ("float32" or "bfloat16"; AdamW's moments take the same
    # dtype), the frozen teacher's parameters, and the student's rematerialized layers:
    # "none", "full" (recompute each layer in the backward pass) or "dots" (keep its
    # projections' outputs) (gkd_jax/models/remat.py).
    c.param_dtype = "float32"
    c.teacher_param_dtype = "float32"
    c.remat = "none"
    # On TPU, the percent of each chip's HBM the compiler may plan the sampler to use (its
    # latency-hiding overlap of the weights' all-gathers): 0 = the share the resident train
    # state, teacher and batch leave free, 1-100 = fixed (gkd_jax/decoding/sampler_memory.py).
    c.sampler_hbm_percent = 0
    # LoRA student (gkd_jax/models/lora.py): rank > 0 freezes the student's weights and trains
    # adapters y = x W + (alpha / rank) (x A) B on the linear layers whose path `targets`
    # matches (re.search on e.g. "layers/0/self_attn/q_proj"; default LORA_TARGETS). The
    # optimizer state and train-state checkpoints hold the adapters only; WORKDIR/model and the
    # Hugging Face export hold the merged weights W + (alpha / rank) A B. A top-level section,
    # not model.*: it applies to any student source (config.init: HF, ours, or from scratch).
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # 0 = off: every parameter trains
    c.lora.alpha = 16.0  # the update's scale is alpha / rank
    c.lora.targets = LORA_TARGETS
    c.tokenizer = ""  # a tokenizer dir; "" builds the task's character tokenizer in the workdir

    c.steps = 200
    c.batch_size = 64
    c.grad_accum = 1  # micro-batches per step; the loss and gradient equal one big batch's
    c.log_every = 20
    c.max_new_tokens = 48  # completion budget: sampled tokens, and target length + EOS
    c.sft_reduction = "token"
    # A step whose loss or gradient norm is not finite leaves params and optimizer state as
    # they were (counted as `skipped_steps` in metrics.jsonl); this many in a row stop the run.
    c.max_nonfinite_steps = 10
    # > 0: stop after this many steps of this invocation, as on SIGTERM (checkpoint, exit 0);
    # slices a long run into sessions (e.g. Colab), and lets tests interrupt a run exactly.
    c.stop_after_steps = 0
    # GKD only, a comma list of lmbdas ("" = none): after this run, train the same run at each
    # (in WORKDIR/compare_lmbdaL, same teacher, start and steps) and print their final scores
    # beside this run's (gkd_jax/evaluation/comparison.py). configs/arith.py: "0", supervised KD.
    c.compare_lmbdas = ""
    # Dropout in the student while it trains (T5 only: as Hugging Face's T5 places it); the
    # masks are a function of (seed, step), so a resumed run draws the same ones.
    c.dropout_rate = 0.0

    # Device mesh (gkd_jax/parallel/sharding.py): batch rows over data x fsdp, parameters and
    # optimizer
    # state over fsdp (ZeRO-3) and tensor (Megatron). -1: the devices the other axes leave.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # Train-state checkpoints in WORKDIR/checkpoints (params, optimizer state, step); a run
    # restarted on the same workdir resumes from the latest one, bit for bit.
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 100  # 0: only at the end (and on SIGTERM / stop_after_steps)
    c.checkpoint.keep = 2  # the last K are kept

    # Where metrics go besides WORKDIR/metrics.jsonl and WORKDIR/tensorboard (metrics_log.py).
    c.log = ml_collections.ConfigDict()
    # A Weights & Biases project ("" = no W&B), used when the wandb package is installed (pip
    # install wandb, or .[wandb]); a resumed run continues its W&B run (WORKDIR/wandb_run_id).
    c.log.wandb_project = ""

    c.data = ml_collections.ConfigDict()
    c.data.train_examples = 20_000
    # arith: the seed that draws the training problems; -1 = config.seed. Fixing it keeps one
    # finite training set across runs of different seeds (the paper's regime: teacher, SFT
    # student and distillation all on the same N problems).
    c.data.train_seed = -1
    c.data.eval_seed = 0
    c.data.max_prompt_len = 48
    # Chat task: TRL-format data (JSONL, a `datasets.save_to_disk` dir, or "hf:NAME[:CONFIG]").
    c.data.train_file = ""
    c.data.train_split = "train"
    c.data.eval_file = ""  # "": hold out the last eval.num_examples training records
    c.data.eval_split = ""  # "": the task's ("validation"; gsm8k: "test")
    # The paper's tasks (xsum, wmt_en_de, gsm8k): where records come from. source "" = "tfds"
    # (the paper's), or "hf" (datasets) / "jsonl" (train_file + eval_file); dataset "" = the
    # task's name there (tfds xsum, wmt14_translate/de-en, gsm8k; hf EdinburghNLP/xsum,
    # wmt/wmt14:de-en, openai/gsm8k:main; or a save_to_disk dir); data_dir = TFDS's data_dir.
    c.data.source = ""
    c.data.dataset = ""
    c.data.data_dir = ""
    c.data.strict = True  # a bad record is an error; False skips and reports it
    # A prompt over max_prompt_len: "error" (a bad record) or "truncate_left" (keep its end).
    c.data.prompt_overflow = "error"
    # Cross-tokenizer runs (gkd.cross_tokenizer): the teacher's prompt length P_t, its own
    # tokenization of the same prompt (its chat template), left-padded like the student's and
    # cut as data.prompt_overflow says. 0 = data.max_prompt_len.
    c.data.teacher_max_prompt_len = 0

    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 500
    c.eval.batch_size = 256
    # Evaluate every N steps too (0 = only at the start and the end); the best student so far is
    # kept in WORKDIR/best_model.
    c.eval.every_steps = 0
    # How evaluation decodes (in training and `python -m gkd_jax.evaluate`): "greedy", "beam"
    # (gkd_jax/decoding/beam_search.py) or "sample" (at eval.temperature).
    c.eval.decoding = "greedy"
    c.eval.beam_size = 4
    c.eval.length_penalty = 0.6  # beam: scores / penalty(length) with this alpha
    c.eval.length_penalty_form = "t5x"  # ((5 + len) / 6) ** alpha; "hf": len ** alpha
    # When beam search settles an example (transformers' early_stopping): "never" (exact: no
    # alive beam can still win), "heuristic" (transformers' default, False), "k_finished" (True).
    c.eval.early_stopping = "never"
    c.eval.temperature = 1.0  # "sample" only
    # Also score the student's evaluation completions by their exact per-token divergence from
    # the teacher (at temperature 1, the full distributions): "" (off), "rkl", "fkl" or "jsd"
    # (at gkd.beta). Reported as "<name>_to_teacher" beside the task's metric (results.json
    # "divergence_to_teacher"): the x-axis of the reward vs divergence trade-off
    # (docs/results/arith_rl.md).
    c.eval.divergence_to_teacher = ""
    # Also score the data's reference replies teacher-forced, which degenerate replies cannot
    # game: the student's NLL of them ("reference_nll" per token, "reference_nll_per_reply") and,
    # where evaluation holds the teacher, the divergences above on them ("teacher_forced_...").
    # "auto": where the task has no metric of its own (chat: its only score is a divergence on the
    # student's own replies); "on"; "off". Reply statistics and a collapse warning: always.
    c.eval.teacher_forced = "auto"

    c.model = model_config()  # the model being trained (the student)
    c.init = model_source()  # where the trained model starts; empty: random init
    # init.layers: a student made from the layers of the model init.checkpoint names (typically
    # the teacher's HF directory or our checkpoint; prune then distill, as Minitron): a string of
    # source layer indices and inclusive ranges, "0-19,26-29" ("" = off; each index once), kept
    # in that order as layers 0..n-1, plus the source's embeddings, final norm and head. The
    # source's shape replaces config.model; decoder-only sources (models/prune.py). LoRA and
    # remat apply to the result; every start cuts it again from init.checkpoint.
    # teacher.tokenizer: "" = the student's (config.tokenizer; both share one vocabulary, checked
    # id by id), else a tokenizer dir or the teacher's model dir, with gkd.cross_tokenizer, which
    # compares the two tokenizations on common text spans (init.tokenizer must stay "").
    c.teacher = model_source(**model_config().to_dict())

    c.gkd = ml_collections.ConfigDict()
    c.gkd.lmbda = 1.0  # student data fraction: P(on-policy completions)
    c.gkd.lmbda_mode = "batch"  # "batch": one draw per batch (paper); "example": one per row
    c.gkd.beta = 0.5  # 0 = forward KL(p_T||p_S), 1 = reverse KL(p_S||p_T), else JSD(beta)
    # "jsd" (generalized JSD with beta), or the paper's baselines by name: "fkl", "rkl", "tv"
    # (total variation, f-distill); beta is used by "jsd" only. "sampled_rkl": reverse KL by
    # policy gradient on the student's own tokens, per-token advantage -(log p_S(y_t) -
    # log p_T(y_t)) (objectives/policy_gradient.py; discounted by rl.gamma, combinable with
    # rl.alpha's rewards).
    c.gkd.divergence = "jsd"
    # lmbda over training: "constant" (the paper's GKD), "imitkd" (0.5: the paper's ImitKD
    # baseline, with divergence "fkl"), "linear" / "exponential" (ImitKD's own rising mixes).
    c.gkd.lmbda_schedule = "constant"
    c.gkd.seq_kd = False  # off-policy completions sampled from the teacher instead of the data
    c.gkd.reduction = "sequence"  # "sequence" (paper) or "token" (TRL)
    c.gkd.teacher_temperature = 1.0  # softmax temperature of the teacher inside the loss
    c.gkd.loss_temperature = 1.0  # divides both models' logits inside the loss (TRL's)
    # How the loss is computed (docs/guides/sharding.md): "full" holds [B, N, V] logits of both
    # models;
    # "chunked" scores loss_chunk positions at a time from them; "fused" never materializes them
    # (from hidden states and the output head). With mesh.tensor > 1 the last two run
    # vocabulary-parallel. chunked/fused: divergences jsd/fkl/rkl. "auto": chunked where it
    # applies, full elsewhere (tv, a sparse teacher, policy gradient; step.resolved_loss_impl).
    c.gkd.loss_impl = "auto"
    c.gkd.loss_chunk = 0  # positions per chunk per device; 0 = loss_forms.default_chunk
    # Sparse teacher (gkd_jax/objectives/sparse_teacher.py): K > 0 scores the loss from the
    # teacher's top-K
    # log-probs per position + one tail bin, the student collapsed onto the same K + 1 bins
    # (exact at K = vocabulary size; a lower bound below). 0 = the full teacher. loss_impl
    # "full"; divergences jsd/fkl/rkl/tv. Any lmbda: the live teacher's top-K is taken in the step.
    c.gkd.teacher_top_k = 0
    # A teacher cache dir (python -m gkd_jax.teacher_cache, docs/guides/rl_sparse.md): the
    # teacher's top-K on the training targets, read instead of loading the teacher. Supervised
    # KD only (lmbda 0, no seq_kd), teacher_top_k = the cache's K. "" = the live teacher.
    c.gkd.teacher_cache = ""
    # Distillation across tokenizers (objectives/cross_tokenizer.py, needs teacher.tokenizer):
    # "" = off (one shared vocabulary); "chunk_rkl" = the exact sequence-level reverse KL by
    # policy gradient on chunks (gkd.divergence "sampled_rkl"); "matched_jsd" = gkd.divergence
    # (jsd / fkl / rkl, at beta) between the next-token distributions at chunk starts, collapsed
    # onto the vocabulary strings both share + one tail bin; "hybrid_uld" = matched_jsd +
    # uld_weight x ULD on the unmatched probabilities (TRL GOLD's hybrid).
    c.gkd.cross_tokenizer = ""
    c.gkd.uld_weight = 1.0  # "hybrid_uld": the weight of its ULD term
    # The teacher's completion length N_t (its tokens of the student's completion text, + stop;
    # longer rows drop their last chunks, counted). 0 = 2 x max_new_tokens.
    c.gkd.teacher_max_new_tokens = 0

    # RL + GKD (gkd_jax/objectives/policy_gradient.py, rl_step.py): minimize (1 - alpha) *
    # (-E[reward]) + alpha * the GKD
    # divergence, on the student's own samples; the reward term by REINFORCE. alpha < 1 (or
    # gkd.divergence "sampled_rkl") trains by policy gradient; alpha = 1 is the GKD step as is.
    c.rl = ml_collections.ConfigDict()
    c.rl.alpha = 1.0  # weight of the divergence; 1 = pure GKD, 0 = pure RL
    # A name in rewards.REWARDS ("exact_answer", "gsm8k_answer", "rouge2", "bleu",
    # "length_penalty") or an import path "module:attribute"; needed when alpha < 1.
    c.rl.reward = ""
    # Samples per prompt (rows i*k .. i*k+k-1 share a prompt): batch_size counts samples, so a
    # step sees batch_size / num_samples prompts. Policy-gradient runs only.
    c.rl.num_samples = 4
    c.rl.baseline = "loo"  # "loo" (mean of the prompt's other samples), "batch" (mean), "none"
    c.rl.normalize_advantages = False  # divide the advantages by their batch std
    # PPO clip epsilon of the ratio p_now / p_sampling for stale samples (0 = off). Samples are
    # drawn from the parameters being updated, so the ratio is 1 and this is a no-op here.
    c.rl.clip_ratio = 0.0
    # "sampled_rkl": discount of later tokens' k_s in token t's advantage (0 = own token only).
    c.rl.gamma = 0.0
    # Report KL(p_S || the starting student) per step (one more student forward, a frozen copy
    # of the start): "auto" = on for policy-gradient runs, "on", "off".
    c.rl.kl_to_start = "auto"

    c.sampling = ml_collections.ConfigDict()  # on-policy (and seq_kd) sampling only
    c.sampling.temperature = 1.0
    c.sampling.top_k = 0
    c.sampling.top_p = 1.0

    c.export = ml_collections.ConfigDict()  # the trained model in Hugging Face format
    c.export.hf = True  # WORKDIR/hf_model, loadable by transformers / vLLM
    c.export.dtype = "float32"  # or "bfloat16", "float16"

    c.optim = ml_collections.ConfigDict()  # gkd_jax/training/optim.py says what each choice is
    c.optim.name = "adamw"  # or "adafactor" (T5's, the paper's)
    c.optim.schedule = "cosine"  # or "linear": warmup, constant, linear cooldown to 0
    c.optim.cooldown_steps = 0  # "linear": the last N steps decay to 0 (0 = no cooldown)
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 20
    c.optim.final_lr_fraction = 0.1
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.98
    c.optim.grad_clip = 1.0  # global gradient-norm clipping; 0 = off
    return c


def shrink_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `:smoke` variant of any config: a few steps on a few examples, seconds on a CPU."""
    c.steps, c.data.train_examples, c.eval.num_examples = 4, 256, 64
    c.batch_size, c.eval.batch_size, c.log_every = 16, 32, 2
    return c
