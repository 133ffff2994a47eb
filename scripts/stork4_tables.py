"""Writes src/acestep_ggml/stork4_tables.npz from acestep.cpp's src/solvers/solver-stork4-constants.h.

The tables are ROCK4's coefficients (Abdulle 2002, via MathWorks FEX #12129), as acestep.cpp
(MIT licence, commit fa337757a0a0d4a576d129bb45dbef00ceced73c) vendors them from HOT-Step-CPP.
Usage: python scripts/stork4_tables.py path/to/solver-stork4-constants.h
"""
import re
import sys

import numpy as np


def table(text: str, name: str) -> np.ndarray:
    body = re.search(name + r"[^=]*=\s*\{(.*?)\};", text, re.S).group(1)
    return np.array([float(x) for x in re.findall(r"[-+0-9.eE]+", body.replace("{", " ").replace("}", " "))])


def main(header: str) -> None:
    text = open(header, encoding="utf-8").read()
    np.savez("src/acestep_ggml/stork4_tables.npz", ms=table(text, "STORK4_MS").astype(np.int32),
             fpa=table(text, "STORK4_FPA").reshape(50, 6), fpb=table(text, "STORK4_FPB").reshape(50, 4),
             recf=table(text, "STORK4_RECF"))


if __name__ == "__main__":
    main(sys.argv[1])
