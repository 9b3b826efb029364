"""Config fields and their defaults, the `:arg` parser, start-up checks, loading a config file,
and how a command starts and reports a user's error (cli.py)."""
