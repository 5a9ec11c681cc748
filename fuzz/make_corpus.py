"""Writes the committed seed corpora: fuzz/corpus/load and fuzz/corpus/kernels.

load:    valid model files of every kind fastmlp saves (raw ``PK`` files and their ``#members``
         encoding), plus truncated and corrupted variants of each;
kernels: byte strings that decode (fuzz_kernels.py) to one call of each kernel (seed-NN), plus
         the inputs a 2-minute coverage-guided run added (named by their SHA-1): the run under
         the sanitizers (.ci/sanitize.sh) gets no coverage feedback from atheris, so it mutates
         this corpus blindly and needs it broad from the start.

    PYTHONPATH=<build>/pkg python fuzz/make_corpus.py [--out fuzz/corpus]

The models are seeded; only the zip timestamps differ between two runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzz_load  # noqa: E402


def _write(directory: str, name: str, data: bytes) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def load_corpus(directory: str) -> int:
    objects = {**fuzz_load.template_models(), **fuzz_load.template_estimators()}
    count = 0
    for name, obj in objects.items():
        data = fuzz_load.file_bytes(obj)
        members = fuzz_load.members_of(data)
        variants = {
            f"{name}.npz": data,
            f"{name}.members": fuzz_load.encode_members(members),
            f"{name}.truncated-half.npz": data[: len(data) // 2],
            f"{name}.truncated-tail.npz": data[:-7],
            f"{name}.flipped-byte.npz": data[:40] + bytes([data[40] ^ 0x5A]) + data[41:],
        }
        cut = fuzz_load.encode_members(members)
        variants[f"{name}.truncated.members"] = cut[: len(cut) * 2 // 3]
        for vname, vdata in variants.items():
            _write(directory, vname, vdata)
            count += 1
    # Structured-edit scripts (fuzz_load's third encoding): a few fixed byte strings.
    for i in range(8):
        _write(directory, f"edits-{i}", hashlib.sha256(b"fastmlp-edits-%d" % i).digest() * 2)
        count += 1
    return count


def kernels_corpus(directory: str) -> int:
    import fuzz_kernels

    count = 0
    for i, data in enumerate(fuzz_kernels.seed_inputs()):
        _write(directory, f"seed-{i:02d}", data)
        count += 1
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus"))
    args = parser.parse_args()
    n_load = load_corpus(os.path.join(args.out, "load"))
    n_kernels = kernels_corpus(os.path.join(args.out, "kernels"))
    print(f"wrote {n_load} load seeds and {n_kernels} kernel seeds under {args.out}")


if __name__ == "__main__":
    main()
