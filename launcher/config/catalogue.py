"""The GPU catalogue: one typed ``GpuSpec`` per ``configs/gpu/<key>.yaml``.

Each YAML is merged onto the ``GpuSpec`` dataclass, so a malformed entry fails loudly.
Use: ``load_catalogue()["h100_sxm"].fp8_tflops``; ``peak_tflops(spec, "bf16")``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import OmegaConf

import gosok.configs
from gosok.launcher.config.schema import GpuSpec

CONFIG_DIR = Path(gosok.configs.__file__).resolve().parent
PEAK_FIELDS = {
    "fp4": "fp4_tflops",
    "fp8": "fp8_tflops",
    "bf16": "bf16_tflops",
    "tf32": "tf32_tflops",
    "fp32": "fp32_tflops",
}


def config_dir() -> Path:
    """Directory of the YAML config tree (works for editable and wheel installs)."""
    return CONFIG_DIR


@functools.lru_cache(maxsize=1)
def load_catalogue() -> dict[str, GpuSpec]:
    catalogue: dict[str, GpuSpec] = {}
    for path in sorted((CONFIG_DIR / "gpu").glob("*.yaml")):
        merged = OmegaConf.merge(OmegaConf.structured(GpuSpec), OmegaConf.load(path))
        spec: GpuSpec = OmegaConf.to_object(merged)  # type: ignore[assignment]
        if spec.key != path.stem:
            raise ValueError(f"{path}: key {spec.key!r} must equal the file name {path.stem!r}")
        catalogue[spec.key] = spec
    return catalogue


def gpu_spec(key: str) -> GpuSpec:
    catalogue = load_catalogue()
    if key not in catalogue:
        raise KeyError(f"unknown gpu {key!r}; allowed: {', '.join(sorted(catalogue))}")
    return catalogue[key]


def peak_tflops(spec: GpuSpec, dtype: str) -> float | None:
    """Dense peak TFLOPS of ``spec`` for ``dtype`` (fp8, bf16, tf32, fp4, fp32), or None."""
    if dtype not in PEAK_FIELDS:
        raise KeyError(f"unknown peak dtype {dtype!r}; allowed: {', '.join(PEAK_FIELDS)}")
    return getattr(spec, PEAK_FIELDS[dtype])


def is_cpu(spec: GpuSpec) -> bool:
    return spec.key == "cpu"
