"""What a run ran on, and the power it drew: host, GPU, software versions, Jetson mode and INA3221 rails.

Power on Jetson comes from the module's INA3221 monitors, read either

- from sysfs (no root needed): ``hwmon`` devices named ``ina3221`` (JetPack 5/6: ``in<N>_label``,
  ``in<N>_input`` mV, ``curr<N>_input`` mA) or the older IIO driver (JetPack 4:
  ``rail_name_<N>``, ``in_power<N>_input`` mW), or
- from ``tegrastats`` lines (:func:`parse_tegrastats_line`), when sysfs is not readable.

The module total is ``VDD_IN`` where the board has it (Orin NX/Nano, Xavier NX), else the sum of
the rails the board splits its input into (AGX Orin, AGX Xavier); :data:`MODULE_TOTAL_RAILS`.

CPU load during a run (:func:`measure_cpu_load`) comes from ``/proc/stat`` (every process) and the
process's own CPU time, so a report says how much of the machine other processes took meanwhile.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eca_deploy.errors import EcaDeployError
from eca_deploy.options import POWER_SOURCES

# Which rails add up to the module's input power, most specific first.
MODULE_TOTAL_RAILS = (
    ("VDD_IN",),                                                  # Orin NX / Orin Nano, Xavier NX, TX2, Nano
    ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"),                 # AGX Orin
    ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"),                # AGX Xavier (JetPack 4)
    ("POM_5V_IN",),                                               # Nano (JetPack 4)
)
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/\d+(?:mW)?)?(?=\s|$)")
_TEMPERATURE = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GPU_LOAD = re.compile(r"\bGR3D_FREQ (\d+)%")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


def cpu_name() -> str:
    """The CPU model as the OS names it (``/proc/cpuinfo``), else the platform's machine type."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cuda_device_name() -> str | None:
    """The first CUDA GPU's name, or None without one (or without a CUDA build of torch)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _run(command: list[str], timeout: float = 10.0) -> str | None:
    """A command's stdout (stripped), or None when it is absent or fails."""
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # noqa: BLE001  (a broken optional install is reported as absent)
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip().strip("\x00")
    except OSError:
        return None


def jetson_info(root: Path = Path("/")) -> dict[str, Any] | None:
    """Jetson module model, L4T release, ``nvpmodel -q`` and ``jetson_clocks --show``; None off Jetson."""
    model = _read(root / "proc/device-tree/model")
    release = _read(root / "etc/nv_tegra_release")
    if release is None and not (model and ("jetson" in model.lower() or "orin" in model.lower())):
        return None
    clocks = _run(["jetson_clocks", "--show"])
    return {"model": model, "l4t_release": release.splitlines()[0] if release else None,
            "nvpmodel": _run(["nvpmodel", "-q"]),
            "jetson_clocks": clocks if clocks is not None else "unavailable (jetson_clocks --show needs root)",
            "power_rails": sorted(read_power_rails(root)) or None}


def capture_environment(root: Path = Path("/")) -> dict[str, Any]:
    """Host, accelerator and software versions for a report."""
    import onnxruntime as ort
    import torch

    gpu = None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        gpu = {"name": properties.name, "compute_capability": f"{properties.major}.{properties.minor}",
               "memory_gib": round(properties.total_memory / 2**30, 1),
               "driver": driver.splitlines()[0] if driver else None, "cuda_runtime": torch.version.cuda}
    return {
        "host": platform.node(), "os": platform.platform(), "python": sys.version.split()[0],
        "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "gpu": gpu,
        "versions": {"eca_deploy": _version("eca_deploy"), "torch": torch.__version__,
                     "onnxruntime": ort.__version__, "onnx": _version("onnx"), "numpy": _version("numpy"),
                     "tensorrt": _version("tensorrt"), "tensorrt_rtx": _version("tensorrt_rtx")},
        "onnxruntime_providers": ort.get_available_providers(),
        "jetson": jetson_info(root),
    }


# ---------------------------------------------------------------------------------------------- CPU load


@dataclass(frozen=True)
class CpuLoad:
    """How busy the CPUs were during a phase, as fractions of all CPUs (1.0: every CPU busy throughout).

    ``busy_fraction`` counts every process (``/proc/stat``), ``own_fraction`` this process alone
    (``os.times``), so ``other_fraction`` is what other processes took from the run. ``None`` where
    ``/proc`` is not there (not Linux).
    """

    seconds: float
    cpus: int
    busy_fraction: float | None
    own_fraction: float
    load_average_1min_before: float | None
    load_average_1min_after: float | None

    @property
    def other_fraction(self) -> float | None:
        return None if self.busy_fraction is None else max(0.0, self.busy_fraction - self.own_fraction)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"other_fraction": self.other_fraction}


def _cpu_jiffies(root: Path) -> tuple[tuple[int, int], int] | None:
    """((busy, total) jiffies summed over every CPU, number of CPUs) from ``/proc/stat``, or None."""
    text = _read(root / "proc/stat")
    if not text:
        return None
    lines = text.splitlines()
    values = [int(field) for field in lines[0].split()[1:]]  # user nice system idle iowait irq softirq steal ...
    total = sum(values[:8])  # guest time is already counted in user and nice
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    cpus = sum(1 for line in lines if re.match(r"cpu\d", line))
    return (total - idle, total), cpus or os.cpu_count() or 1


def _load_average(root: Path) -> float | None:
    text = _read(root / "proc/loadavg")
    return float(text.split()[0]) if text else None


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@contextlib.contextmanager
def measure_cpu_load(root: Path = Path("/")) -> Iterator[list[CpuLoad]]:
    """Measure CPU use during the ``with`` block; the yielded list holds one :class:`CpuLoad` afterwards."""
    result: list[CpuLoad] = []
    load_before, jiffies_before = _load_average(root), _cpu_jiffies(root)
    own_before, start = _own_cpu_seconds(), time.perf_counter()
    try:
        yield result
    finally:
        seconds, own = time.perf_counter() - start, _own_cpu_seconds() - own_before
        jiffies_after = _cpu_jiffies(root)
        busy, cpus = None, os.cpu_count() or 1
        if jiffies_before and jiffies_after:
            (busy_a, total_a), _ = jiffies_before
            (busy_b, total_b), cpus = jiffies_after
            busy = (busy_b - busy_a) / (total_b - total_a) if total_b > total_a else None
        own_fraction = min(1.0, own / (seconds * cpus)) if seconds > 0 else 0.0
        result.append(CpuLoad(seconds, cpus, busy, own_fraction, load_before, _load_average(root)))


# ---------------------------------------------------------------------------------------------- power


def read_power_rails(root: Path = Path("/")) -> dict[str, float]:
    """Instantaneous power of every INA3221 rail in milliwatts, from sysfs (empty when there is none)."""
    rails: dict[str, float] = {}
    for device in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        if _read(device / "name") != "ina3221":
            continue
        for label_file in sorted(device.glob("in*_label")):
            channel = label_file.name[2:-len("_label")]
            millivolts, milliamps = _read(device / f"in{channel}_input"), _read(device / f"curr{channel}_input")
            label = _read(label_file)
            if label and millivolts is not None and milliamps is not None and not label.startswith("sum of"):
                rails[label] = int(millivolts) * int(milliamps) / 1000.0
    for device in sorted((root / "sys/bus/i2c/drivers/ina3221x").glob("*/iio:device*")):
        for name_file in sorted(device.glob("rail_name_*")):
            channel = name_file.name.rsplit("_", 1)[1]
            milliwatts, label = _read(device / f"in_power{channel}_input"), _read(name_file)
            if label and milliwatts is not None:
                rails[label] = float(milliwatts)
    return rails


def read_temperatures(root: Path = Path("/")) -> dict[str, float]:
    """Thermal zone temperatures in degrees Celsius (``/sys/class/thermal``), by zone type."""
    temperatures = {}
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        kind, value = _read(zone / "type"), _read(zone / "temp")
        if kind and value and value.lstrip("-").isdigit() and int(value) > -40000:  # -256 C marks an off zone
            temperatures[kind] = int(value) / 1000.0
    return temperatures


def parse_tegrastats_line(line: str) -> dict[str, Any]:
    """One ``tegrastats`` line -> ``{"rails_mw": {...}, "temperatures_c": {...}, "ram_mb": .., "gpu_load": ..}``.

    Handles ``NAME cur/avg`` with or without ``mW`` units (JetPack 4 prints bare numbers; JetPack
    6+ may add a third ``/max`` value) and ``name@42.5C`` temperatures; fields a board does not
    print are absent, and off sensors (-256C) are dropped.
    """
    rails = {name: float(current) for name, current, _ in _RAIL.findall(line) if name not in _NOT_RAILS}
    temperatures = {name: float(value) for name, value in _TEMPERATURE.findall(line) if float(value) > -40}
    ram = _RAM.search(line)
    load = _GPU_LOAD.search(line)
    return {"rails_mw": rails, "temperatures_c": temperatures,
            "ram_mb": [int(ram.group(1)), int(ram.group(2))] if ram else None,
            "gpu_load_percent": int(load.group(1)) if load else None}


def module_power_mw(rails: dict[str, float]) -> tuple[float | None, tuple[str, ...]]:
    """The module's input power from its rails, and which rails it is the sum of (None when unknown)."""
    for names in MODULE_TOTAL_RAILS:
        if all(name in rails for name in names):
            return sum(rails[name] for name in names), names
    return None, ()


@dataclass
class PowerSummary:
    """Mean power per rail over a run, the module total, temperatures, and the run's energy."""

    source: str
    samples: int
    duration_s: float
    rails_mean_mw: dict[str, float]
    module_total_rails: tuple[str, ...]
    module_mean_w: float | None
    temperatures_max_c: dict[str, float] = field(default_factory=dict)

    def energy_j(self) -> float | None:
        return None if self.module_mean_w is None else self.module_mean_w * self.duration_s

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "samples": self.samples, "duration_s": self.duration_s,
                "rails_mean_mw": self.rails_mean_mw, "module_total_rails": list(self.module_total_rails),
                "module_mean_w": self.module_mean_w, "energy_j": self.energy_j(),
                "temperatures_max_c": self.temperatures_max_c}


class PowerSampler:
    """Samples INA3221 rails and temperatures in a background thread while a benchmark runs.

    ``source``: ``"auto"`` (sysfs, else ``tegrastats``), ``"sysfs"``, ``"tegrastats"`` or ``"none"``.
    Off Jetson, ``available`` is False and :meth:`measure` yields None.
    """

    def __init__(self, source: str = "auto", interval_s: float = 0.05, root: Path = Path("/")) -> None:
        if source not in POWER_SOURCES:
            raise EcaDeployError(f"power source must be one of {', '.join(POWER_SOURCES)}, got {source!r}")
        if interval_s <= 0:
            raise EcaDeployError(f"the power sampling interval must be positive, got {interval_s}")
        self.root, self.interval_s = root, interval_s
        if source == "auto":
            source = "sysfs" if read_power_rails(root) else ("tegrastats" if shutil.which("tegrastats") else "none")
        elif source == "sysfs" and not read_power_rails(root):
            raise EcaDeployError("no INA3221 power rails under /sys/class/hwmon or the ina3221x driver: this is "
                                 "not a Jetson with power monitors (use --power none or auto)")
        elif source == "tegrastats" and shutil.which("tegrastats") is None:
            raise EcaDeployError("tegrastats is not on PATH (it ships with Jetson Linux); use --power sysfs or none")
        self.source = source

    @property
    def available(self) -> bool:
        return self.source != "none"

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[PowerSummary]]:
        """Sample during the ``with`` block; the yielded list holds one :class:`PowerSummary` afterwards."""
        result: list[PowerSummary] = []
        if not self.available:
            yield result
            return
        samples: list[tuple[dict[str, float], dict[str, float]]] = []
        stop = threading.Event()
        reader = self._sysfs_samples if self.source == "sysfs" else self._tegrastats_samples
        thread = threading.Thread(target=reader, args=(samples, stop), daemon=True)
        start = time.perf_counter()
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join(timeout=5)
            result.append(summarize_power(samples, self.source, time.perf_counter() - start))

    def _sysfs_samples(self, samples: list, stop: threading.Event) -> None:
        while not stop.is_set():
            samples.append((read_power_rails(self.root), read_temperatures(self.root)))
            stop.wait(self.interval_s)

    def _tegrastats_samples(self, samples: list, stop: threading.Event) -> None:
        interval_ms = max(int(self.interval_s * 1000), 10)
        with subprocess.Popen(["tegrastats", "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) as process:
            try:
                for line in process.stdout:
                    parsed = parse_tegrastats_line(line)
                    samples.append((parsed["rails_mw"], parsed["temperatures_c"]))
                    if stop.is_set():
                        break
            finally:
                process.terminate()


def summarize_power(samples: list[tuple[dict[str, float], dict[str, float]]], source: str,
                    duration_s: float) -> PowerSummary:
    """Average rail samples into a :class:`PowerSummary` (rails missing from some samples average the rest)."""
    sums: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    for rails, temperatures in samples:
        for name, milliwatts in rails.items():
            sums.setdefault(name, []).append(milliwatts)
        for name, celsius in temperatures.items():
            peaks[name] = max(celsius, peaks.get(name, celsius))
    means = {name: sum(values) / len(values) for name, values in sums.items()}
    total_mw, total_rails = module_power_mw(means)
    return PowerSummary(source=source, samples=len(samples), duration_s=duration_s, rails_mean_mw=means,
                        module_total_rails=total_rails, module_mean_w=None if total_mw is None else total_mw / 1000,
                        temperatures_max_c=peaks)

