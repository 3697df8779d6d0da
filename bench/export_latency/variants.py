"""The export-latency benchmark's variants, shared by the measurement and its report."""

# Variant key -> label, in the order they run within a round and appear in tables.
VARIANTS = {
    "eager": "PyTorch eager",
    "folded": "PyTorch folded",
    "ort_fp32_unmerged": "ORT fp32 unmerged",
    "ort_fp32": "ORT fp32 merged",
    "ort_int8": "ORT int8",
}
