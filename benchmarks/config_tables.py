"""The measured config tables' file, as ``sparse24_jax_kernels.cutlass.backend`` reads it
(``gemm_configs.json`` from ``sparse_gemm.py --table-out``, ``epilogue_configs.json`` from
``cutlass_epilogue.py --table-out``): where it was measured and how, then
``"table": {"NxK": {product: config}}`` keyed by the layer's weight shape."""

from __future__ import annotations

import datetime
import json
import sys


def write_config_table(path: str, table: dict[str, dict[str, str]], *, device: str, m: int | None,
                       script: str, argv, what: str) -> None:
    """Write ``table`` to ``path`` with the device, today's date, the command that measured
    it (``script`` and ``argv``, default this process's arguments) and the token count
    ``m``; say so on stdout (``what``: which configs)."""
    cmd = " ".join(["python3", f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])
    with open(path, "w") as fh:
        json.dump({"device": device, "date": datetime.date.today().isoformat(), "command": cmd,
                   "M": m, "table": table}, fh, indent=1)
    print(f"{what} per layer shape written to {path}: {table}")
