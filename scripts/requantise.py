"""Write a copy of a GGUF with its 2-D weights in another quantisation type, for `mha diff A.gguf B.gguf`.

    python scripts/requantise.py SmolLM2-135M-Instruct.Q4_1.gguf smollm2-q8_0.gguf --type Q8_0

Every tensor is dequantised to float32 and quantised again with the `gguf` package's quantiser (F32, F16, BF16,
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: the types gguf.quants can write); 1-D tensors (norms, biases) stay as they are, as
do tensors whose rows are not whole blocks of the new type. Metadata is copied unchanged. Requantising an
already quantised file adds the new type's error to the old one: diff a Q8_0 copy against the original to see
what the original's quantisation did on top of Q8_0's, or against a Q4_0 copy to see one more step.

The input is read with gguf's GGUFReader: run this on files you trust (mha itself validates a GGUF before
reading it; see mhacli/io/gguf.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def requantise(source: Path, target: Path, qtype_name: str) -> dict[str, int]:
    """Copy `source` to `target` with 2-D tensors in `qtype_name`; returns the new type counts."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(target), arch)
    for f in reader.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        if f.name == gguf.Keys.General.FILE_TYPE:
            continue  # no longer true; llama.cpp reads the types from the tensors
        writer.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)  # [rows..., n] numpy order
        if values.ndim >= 2 and values.shape[-1] % block == 0 and qtype != gguf.GGMLQuantizationType.F32:
            data, kind = gguf.quants.quantize(values, qtype), qtype
        else:
            data, kind = values, gguf.GGMLQuantizationType.F32
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(t.name, data)
        else:
            writer.add_tensor(t.name, data, raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--type", default="Q8_0", help="F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 (default Q8_0)")
    args = parser.parse_args(argv)
    counts = requantise(args.source, args.target, args.type.upper())
    print(f"{args.target}: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
