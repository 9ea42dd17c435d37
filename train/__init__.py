"""sparse24_train: pre-train GPT-2 with 2:4 sparse FFN weights (SR-STE, S-STE) on sparse24_jax.

nanoGPT-style: model.py (the model), train.py (the loop), data.py, checkpoint.py,
config.py; command lines in cli.py (sparse24-train), plot.py (sparse24-plot) and
tune_decay.py (sparse24-tune-decay). Configs (numbers only) live in configs/.
"""
