"""`python -m train` (from the repo root) or `python -m sparse24_train`: same as sparse24-train."""
from .cli import main

main()
