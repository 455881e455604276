"""Jetson power and environment capture: tegrastats lines, INA3221 sysfs trees, the sampler, J/image.

No Jetson is attached to CI, so the inputs are the formats Jetsons print, written out below with
where each line was published, and sysfs trees laid out as JetPack 4 (IIO) and JetPack 5/6 (hwmon)
drivers lay them out.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from test_runtime import INPUT_SHAPE, export_demo_64

from eca_deploy.errors import EcaDeployError
from eca_deploy.harness.backends import OnnxRuntimeBackend
from eca_deploy.harness.data import RandomInputs
from eca_deploy.image_folders import Batch
from eca_deploy.harness.environment import (PowerSampler, capture_environment, jetson_info, measure_cpu_load,
                                            module_power_mw, parse_tegrastats_line, read_power_rails, read_temperatures,
                                            summarize_power)
from eca_deploy.harness.latency import LatencySettings, measure_latency

# Orin NX, JetPack 6 (L4T r36): quoted in the source of a public Jetson monitoring dashboard.
ORIN_NX_JP6 = (
    "01-24-2024 09:17:09 RAM 3503/7337MB (lfb 7x1MB) SWAP 430/3668MB (cached 1MB) "
    "CPU [11%@729,13%@729,9%@729,18%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@305 GR3D2_FREQ 0%@0 "
    "VIC_FREQ 115 APE 174 CV0@42.718C CPU@44.093C SOC2@42.625C SOC0@43.281C CV1@42.25C GPU@41.343C "
    "tj@46.968C SOC1@46.968C CV2@42.875C VDD_IN 4915mW/4915mW VDD_CPU_GPU_CV 449mW/449mW VDD_SOC 1431mW/1431mW")
# Orin Nano, JetPack 6.2 (r36.4): lower-case sensors, engines reported "off"; from a public monitor script.
ORIN_NANO_JP62 = (
    "09-21-2025 15:38:17 RAM 3645/7620MB (lfb 63x4MB) SWAP 236/3810MB (cached 0MB) "
    "CPU [1%@729,1%@729,4%@729,1%@729,0%@729,0%@729] EMC_FREQ 0%@204 GR3D_FREQ 0%@[305] NVDEC off NVJPG off "
    "NVJPG1 off VIC off OFA off APE 200 cpu@44.125C soc2@43.375C soc0@42.125C gpu@44.531C tj@44.531C "
    "soc1@43.156C VDD_IN 2957mW/2957mW VDD_CPU_GPU_CV 486mW/486mW VDD_SOC 1012mW/1012mW")
# Orin Nano, a newer tegrastats printing current/average/maximum: from a public parser's test suite.
ORIN_NANO_THREE_COLUMNS = (
    "09-01-2026 09:25:18 RAM 5739/7546MB (lfb 1x2MB) SWAP 2047/2048MB (cached 209MB) "
    "CPU [72%@1728,75%@1728,88%@1728,79%@1728,87%@1728,78%@1728] GR3D_FREQ 33% cpu@50C/50C "
    "soc2@47.937C/47.937C soc0@48.437C/48.437C gpu@48.75C/48.75C tj@50C/50C soc1@48.5C/48.5C "
    "VDD_IN 9761mW/9761mW/9761mW VDD_CPU_GPU_CV 4238mW/4238mW/4238mW VDD_SOC 1825mW/1825mW/1825mW")
# AGX Orin: no VDD_IN rail; the module input is split over three rails. From a public benchmark's tests.
AGX_ORIN = ("RAM 3000/30000MB (lfb 1x1MB) SWAP 0/15000MB CPU [1%@2201] GR3D_FREQ 0% "
            "VDD_GPU_SOC 4876mW/4876mW VDD_CPU_CV 975mW/975mW VIN_SYS_5V0 4461mW/4461mW")
# Xavier NX, JetPack 5: from the docstring of a public Jetson Xavier metrics collector.
XAVIER_NX_JP5 = (
    "RAM 2690/6854MB (lfb 6x1MB) SWAP 479/3427MB (cached 3MB) CPU [3%@1904,7%@1906,1%@1905,0%@1907,off,off] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 0%@[510] VIC_FREQ 601 APE 150 AUX@39C CPU@39.5C AO@37.5C GPU@37.5C PMIC@50C "
    "VDD_IN 5079mW/5079mW VDD_CPU_GPU_CV 696mW/696mW VDD_SOC 1104mW/1104mW")
# TX2-class JetPack 4 line without units: jetson_stats' tegrastats emulator (rbonghi/jetson_stats, tests/tegrastats).
TX2_JP4 = (
    "RAM 4722/7844MB (lfb 1x512kB) CPU [55%@2035,14%@2034,27%@2034,55%@2035,47%@2035,45%@2035] "
    "SWAP 149/1024MB (cached 7MB) EMC_FREQ 2%@1866 GR3D_FREQ 40%@1300 APE 150 MTS fg 0% bg 0% BCPU@-45C "
    "MCPU@-45C GPU@-51C PLL@45C AO@47.5C Tboard@37C Tdiode@46.75C PMIC@100C thermal@46.4C VDD_IN 14025/14416 "
    "VDD_CPU 2209/2538 VDD_GPU 6854/6903 VDD_SOC 1371/1370 VDD_WIFI 19/19 NVENC 716 NVDEC 716 VDD_DDR 2702/2702")
# AGX Xavier, JetPack 4: rails named GPU, CPU, SOC, CV, VDDRQ, SYS5V (energymon's JetsonPowerRails.md,
# from the L4T 32.6 developer guide); the line is written in that release's unit-less format.
AGX_XAVIER_JP4 = ("RAM 2200/15823MB (lfb 2961x4MB) SWAP 0/7911MB (cached 0MB) CPU [2%@1190,1%@1190] EMC_FREQ 0% "
                  "GR3D_FREQ 0% AO@40.5C GPU@41C Tdiode@43.25C PMIC@100C AUX@40C CPU@42C thermal@41.4C Tboard@40C "
                  "GPU 0/0 CPU 311/311 SOC 1244/1244 CV 0/0 VDDRQ 155/155 SYS5V 1965/1965")
# Jetson Nano 2GB has no INA3221: no rails at all (jetson_stats' Nano emulator line, rails removed).
NO_RAILS = ("RAM 1180/1972MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) CPU [30%@1036,33%@1036,28%@1036,26%@1036] "
            "EMC_FREQ 10%@1600 GR3D_FREQ 0%@76 APE 25 PLL@57C CPU@60.5C PMIC@100C GPU@59C AO@65C thermal@59.75C")


@pytest.mark.parametrize("line, rails, total, total_rails", [
    (ORIN_NX_JP6, {"VDD_IN": 4915, "VDD_CPU_GPU_CV": 449, "VDD_SOC": 1431}, 4915, ("VDD_IN",)),
    (ORIN_NANO_JP62, {"VDD_IN": 2957, "VDD_CPU_GPU_CV": 486, "VDD_SOC": 1012}, 2957, ("VDD_IN",)),
    (ORIN_NANO_THREE_COLUMNS, {"VDD_IN": 9761, "VDD_CPU_GPU_CV": 4238, "VDD_SOC": 1825}, 9761, ("VDD_IN",)),
    (AGX_ORIN, {"VDD_GPU_SOC": 4876, "VDD_CPU_CV": 975, "VIN_SYS_5V0": 4461}, 4876 + 975 + 4461,
     ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")),
    (XAVIER_NX_JP5, {"VDD_IN": 5079, "VDD_CPU_GPU_CV": 696, "VDD_SOC": 1104}, 5079, ("VDD_IN",)),
    (TX2_JP4, {"VDD_IN": 14025, "VDD_CPU": 2209, "VDD_GPU": 6854, "VDD_SOC": 1371, "VDD_WIFI": 19,
               "VDD_DDR": 2702}, 14025, ("VDD_IN",)),
    (AGX_XAVIER_JP4, {"GPU": 0, "CPU": 311, "SOC": 1244, "CV": 0, "VDDRQ": 155, "SYS5V": 1965}, 3675,
     ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V")),
    (NO_RAILS, {}, None, ()),
])
def test_tegrastats_lines_of_orin_and_xavier(line, rails, total, total_rails):
    parsed = parse_tegrastats_line(line)
    assert parsed["rails_mw"] == rails
    assert module_power_mw(parsed["rails_mw"]) == (total, total_rails)
    assert parsed["ram_mb"] is not None


def test_tegrastats_temperatures_load_and_missing_fields():
    orin = parse_tegrastats_line(ORIN_NX_JP6)
    assert orin["temperatures_c"]["tj"] == 46.968 and orin["temperatures_c"]["GPU"] == 41.343
    assert orin["ram_mb"] == [3503, 7337] and orin["gpu_load_percent"] == 0
    assert parse_tegrastats_line(ORIN_NANO_THREE_COLUMNS)["temperatures_c"]["cpu"] == 50.0
    assert "BCPU" not in parse_tegrastats_line(TX2_JP4)["temperatures_c"]  # -45C marks an absent sensor
    assert parse_tegrastats_line(TX2_JP4)["gpu_load_percent"] == 40
    empty = parse_tegrastats_line("")
    assert empty == {"rails_mw": {}, "temperatures_c": {}, "ram_mb": None, "gpu_load_percent": None}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def fake_orin_sysfs(root: Path) -> Path:
    """JetPack 5/6 layout: an ``ina3221`` hwmon device (mV and mA per channel), thermal zones, device tree."""
    hwmon = root / "sys/class/hwmon/hwmon1"
    _write(hwmon / "name", "ina3221")
    for channel, (label, millivolts, milliamps) in enumerate(
            [("VDD_IN", 5000, 1000), ("VDD_CPU_GPU_CV", 5000, 200), ("VDD_SOC", 5000, 300)], start=1):
        _write(hwmon / f"in{channel}_label", label)
        _write(hwmon / f"in{channel}_input", str(millivolts))
        _write(hwmon / f"curr{channel}_input", str(milliamps))
    _write(hwmon / "in7_label", "sum of shunt voltages")
    _write(hwmon / "in7_input", "40")
    _write(hwmon / "curr7_input", "1")
    _write(root / "sys/class/hwmon/hwmon0/name", "nvme")
    _write(root / "sys/class/thermal/thermal_zone0/type", "cpu-thermal")
    _write(root / "sys/class/thermal/thermal_zone0/temp", "45500")
    _write(root / "sys/class/thermal/thermal_zone1/type", "cv0-thermal")
    _write(root / "sys/class/thermal/thermal_zone1/temp", "-256000")
    _write(root / "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    _write(root / "etc/nv_tegra_release", "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic")
    return root


def test_sysfs_rails_jetpack6_hwmon_and_jetpack4_iio(tmp_path):
    root = fake_orin_sysfs(tmp_path / "orin")
    assert read_power_rails(root) == {"VDD_IN": 5000.0, "VDD_CPU_GPU_CV": 1000.0, "VDD_SOC": 1500.0}
    assert read_temperatures(root) == {"cpu-thermal": 45.5}
    xavier = tmp_path / "xavier/sys/bus/i2c/drivers/ina3221x/1-0040/iio:device0"
    for channel, (name, milliwatts) in enumerate([("GPU", 1200), ("CPU", 800), ("SOC", 1500)]):
        _write(xavier / f"rail_name_{channel}", name)
        _write(xavier / f"in_power{channel}_input", str(milliwatts))
    assert read_power_rails(tmp_path / "xavier") == {"GPU": 1200.0, "CPU": 800.0, "SOC": 1500.0}
    assert read_power_rails(tmp_path / "nothing") == {}


def test_jetson_info_and_environment(tmp_path):
    info = jetson_info(fake_orin_sysfs(tmp_path))
    assert info["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert info["l4t_release"].startswith("# R36 (release), REVISION: 4.0")
    assert info["power_rails"] == ["VDD_CPU_GPU_CV", "VDD_IN", "VDD_SOC"]
    assert "jetson_clocks" in info and "nvpmodel" in info
    assert jetson_info(tmp_path / "not-a-jetson") is None
    environment = capture_environment(tmp_path / "not-a-jetson")
    assert environment["jetson"] is None and environment["cpu"]
    assert environment["versions"]["torch"] and environment["versions"]["onnxruntime"]


def test_summaries_average_rails_and_keep_peak_temperatures():
    samples = [({"VDD_IN": 4000.0, "VDD_SOC": 1000.0}, {"tj": 40.0}), ({"VDD_IN": 6000.0}, {"tj": 50.0})]
    summary = summarize_power(samples, "sysfs", duration_s=2.0)
    assert summary.rails_mean_mw == {"VDD_IN": 5000.0, "VDD_SOC": 1000.0}
    assert summary.module_mean_w == 5.0 and summary.energy_j() == 10.0
    assert summary.temperatures_max_c == {"tj": 50.0} and summary.samples == 2
    assert summarize_power([], "sysfs", 1.0).module_mean_w is None


def test_benchmark_with_power_gives_joules_per_image(tmp_path):
    """End to end: ONNX Runtime CPU timed while a sampler reads a (constant) INA3221 sysfs tree."""
    _, _, fused = export_demo_64(tmp_path.parent, "eca_mobilenet_v2", "mnv2")
    sampler = PowerSampler("auto", interval_s=0.005, root=fake_orin_sysfs(tmp_path / "orin"))
    assert sampler.source == "sysfs" and sampler.available
    inputs = RandomInputs(INPUT_SHAPE, batch_size=2, num_batches=1)
    settings = LatencySettings(warmup_iterations=1, warmup_seconds=0, iterations=5, duration_seconds=0.2)
    result = measure_latency(OnnxRuntimeBackend(fused), 2, lambda n, i: Batch(inputs.batch(n), None),
                             settings=settings, sampler=sampler)
    assert result.power.samples >= 2 and result.power.module_mean_w == pytest.approx(5.0)
    figures = result.power_figures()
    assert figures["joules_per_image"] == pytest.approx(5.0 / result.throughput)
    assert figures["images_per_second_per_watt"] == pytest.approx(result.throughput / 5.0)
    assert result.to_dict()["power"]["temperatures_max_c"] == {"cpu-thermal": 45.5}
    assert PowerSampler("auto", root=tmp_path / "empty").source in ("none", "tegrastats")


def test_tegrastats_sampler_reads_a_running_tegrastats(tmp_path, monkeypatch):
    """The tegrastats path with a real subprocess: a stand-in printing Orin lines at the asked interval."""
    script = tmp_path / "bin/tegrastats"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n[ \"$1\" = --interval ] || exit 2\n"
                      f"while true; do echo '{ORIN_NX_JP6}'; sleep 0.01; done\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    sampler = PowerSampler("tegrastats", interval_s=0.01, root=tmp_path)
    with sampler.measure() as power:
        import time

        time.sleep(0.3)
    (summary,) = power
    assert summary.source == "tegrastats" and summary.samples >= 2
    assert summary.module_mean_w == pytest.approx(4.915) and summary.module_total_rails == ("VDD_IN",)
    assert summary.temperatures_max_c["tj"] == 46.968


def test_asking_for_a_power_source_that_is_absent_says_so(tmp_path, monkeypatch):
    with pytest.raises(EcaDeployError, match="no INA3221 power rails"):
        PowerSampler("sysfs", root=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EcaDeployError, match="tegrastats is not on PATH"):
        PowerSampler("tegrastats", root=tmp_path)
    with pytest.raises(EcaDeployError, match="power source must be one of"):
        PowerSampler("ina219")
    assert PowerSampler("auto", root=tmp_path).source == "none"


def test_cpu_load_of_every_process_and_of_this_one(tmp_path):
    """/proc/stat and /proc/loadavg as Linux writes them, changed during the block: half the CPU time was busy."""
    proc = tmp_path / "proc"
    proc.mkdir()
    stat_lines = ("cpu  {user} 7 {system} {idle} 20 0 3 0 0 0\n"
                  "cpu0 1 0 1 1 0 0 0 0 0 0\ncpu1 1 0 1 1 0 0 0 0 0 0\nctxt 5\n")
    (proc / "stat").write_text(stat_lines.format(user=100, system=100, idle=800))
    (proc / "loadavg").write_text("0.50 0.40 0.30 1/100 1234\n")
    with measure_cpu_load(tmp_path) as load:
        (proc / "stat").write_text(stat_lines.format(user=250, system=150, idle=1000))  # +200 busy, +200 idle
        (proc / "loadavg").write_text("1.50 0.60 0.30 2/100 1235\n")
        spin_until = time.process_time() + 0.2
        while time.process_time() < spin_until:  # this process keeps a CPU busy
            pass
    (result,) = load
    assert result.cpus == 2 and result.busy_fraction == pytest.approx(0.5)
    assert (result.load_average_1min_before, result.load_average_1min_after) == (0.5, 1.5)
    own_cpu_seconds = result.own_fraction * result.cpus * result.seconds
    assert result.seconds >= 0.2 and own_cpu_seconds >= 0.2 - 0.02  # the kernel counts CPU time in 10 ms ticks
    assert result.other_fraction == pytest.approx(max(0.0, 0.5 - result.own_fraction))
    assert result.to_dict()["other_fraction"] == result.other_fraction

    with measure_cpu_load(tmp_path / "not-linux") as load:
        pass
    assert (load[0].busy_fraction, load[0].other_fraction, load[0].load_average_1min_before) == (None, None, None)
