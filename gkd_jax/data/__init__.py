"""Tasks and their data: the registry (tasks.py) of Task / Split (task_types.py), each task's
records (arith, chat, paper_tasks from sources), tokenizers, and fixed-shape batches (pipeline).
Nothing here imports gkd_jax.models (tests/test_imports.py)."""
