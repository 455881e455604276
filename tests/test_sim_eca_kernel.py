"""The simulator benchmark's plan, log parsing and tables (scripts/sim_eca_kernel.py), on a captured GPGPU-Sim log;
one tiny case in the simulator itself where ../shared/gpusim is set up (skipped with the reason otherwise)."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parents[1] / "scripts"
DATA = Path(__file__).parent / "data" / "sim"
sys.path.insert(0, str(SCRIPTS))  # sim_eca_kernel imports bench_eca_kernel from beside it
spec = importlib.util.spec_from_file_location("sim_eca_kernel", SCRIPTS / "sim_eca_kernel.py")
sim = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
spec.loader.exec_module(sim)
bench = sim.bench

#: scripts/sim_eca_kernel.cu's naive variant on C=16, 4 x 4, k=3, FP16, simulated on SM80_A100 with a cold L2.
NAIVE_LOG = DATA / "naive_c16_4x4_k3_fp16_sm80.log.gz"
#: (kernel, cycles, DRAM bytes read, L2 accesses, L2 hits) of each of its kernels, read off the log by hand.
NAIVE_KERNELS = [("naiveMeanNchw", 6747, 512, 32, 14), ("naiveConv1d", 6630, 32, 5, 2),
                 ("naiveSigmoid", 5701, 0, 4, 2), ("naiveScale", 5974, 0, 34, 18)]
LATENCY = 5000


def naive_log() -> str:
    return gzip.decompress(NAIVE_LOG.read_bytes()).decode()


# --- plan ----------------------------------------------------------------------------------------------------------

def test_issue_plan_holds_every_zoo_layer_in_both_dtypes_and_layouts_on_the_a100():
    runs = sim.issue_plan()
    batch1 = [r for r in runs if r.config == sim.A100 and r.case.batch == 1]
    shapes = {case.shape for case in bench.build_plan()}
    for variant in ("ours", "naive"):
        keys = {(r.case.shape, r.case.dtype, r.case.layout) for r in batch1 if r.variant == variant}
        assert keys == {(s, d, layout) for s in shapes for d in bench.DTYPES for layout in bench.LAYOUTS}
    single = [r for r in batch1 if r.variant == "single"]
    assert {r.case.layout for r in single} == {"nchw"} and len(single) == len(shapes) * 2
    copies = Counter((r.config, r.case.shape, r.case.batch, r.case.dtype) for r in runs if r.variant == "copy")
    assert set(copies.values()) == {1}, "the copy kernel runs once per shape, batch and dtype"
    assert len(runs) == len(set(runs))


def test_issue_plan_has_two_batch8_shapes_and_three_rtx3070_shapes():
    runs = sim.issue_plan()
    assert {r.case.shape for r in runs if r.case.batch == 8} == set(sim.BATCH8_SHAPES)
    rtx = [r for r in runs if r.config == sim.RTX3070]
    assert {r.case.shape for r in rtx} == set(sim.RTX3070_SHAPES) and len(sim.RTX3070_SHAPES) >= 3
    assert {r.variant for r in rtx} == set(sim.VARIANTS)


def test_select_filters_and_keeps_the_copy_of_a_selected_layout():
    runs = sim.select(sim.issue_plan(), configs=[sim.A100], shapes=["320x7x7"], batches=[1], dtypes=["fp16"],
                      layouts=["channels_last"])
    assert sorted(r.variant for r in runs) == ["copy", "naive", "ours"]
    assert all(r.case.shape.channels == 320 and r.case.dtype == "fp16" for r in runs)


# --- the simulator's log -------------------------------------------------------------------------------------------

def test_parse_log_gives_each_kernel_its_own_cycles_and_traffic():
    parsed = sim.parse_log(naive_log(), LATENCY)
    got = [(k["name"], k["cycles"], k["dram_read_bytes"], k["l2_accesses"], k["l2_hits"]) for k in parsed["kernels"]]
    assert got == NAIVE_KERNELS
    assert [k["exec_cycles"] for k in parsed["kernels"]] == [c - LATENCY for _, c, *_ in NAIVE_KERNELS]
    assert parsed["cycles"] == sum(c for _, c, *_ in NAIVE_KERNELS)
    assert parsed["exec_cycles"] == parsed["cycles"] - 4 * LATENCY
    assert parsed["dram_read_bytes"] == 544 and parsed["dram_write_bytes"] == 0  # x (512 B) and the taps, once
    assert all(k["instructions"] > 0 for k in parsed["kernels"])


def test_parse_log_gives_each_kernel_its_launch_and_what_limits_its_ctas_per_sm():
    kernels = sim.parse_log(naive_log(), LATENCY)["kernels"]
    # read off the log by hand: "gridDim= (16,1,1) blockDim = (256,1,1)", "CTA/core = 8, limited by: threads regs"
    assert [(k["ctas"], k["threads_per_cta"], k["ctas_per_sm"], k["ctas_per_sm_limited_by"]) for k in kernels] == [
        (16, 256, 8, "threads"), (1, 256, 8, "threads regs"), (1, 256, 8, "threads"), (1, 256, 8, "threads")]


def test_parse_log_refuses_a_log_whose_launches_do_not_match_its_kernels():
    log = naive_log()
    placed = log.index("GPGPU-Sim uArch: CTA/core")
    with pytest.raises(sim.LogError, match="4 kernels finished in the log but 4 were launched and 3 placed"):
        sim.parse_log(log[:placed] + log[log.index("\n", placed):], LATENCY)


def test_reread_logs_updates_the_figures_of_results_whose_log_was_kept(tmp_path):
    case = bench.Case(bench.LayerShape(16, 4, 4, 3), 1, "fp16", "nchw", 1, ("test",))
    kept, lost, other = (sim.run_fields(sim.SimRun(sim.A100, case, variant)) for variant in ("naive", "copy", "ours"))
    for result in (kept, lost, other):
        result.update(launch_latency=LATENCY, correct=True, error=1e-4, exec_cycles=0,
                      kernels=[{"cycles": c, "exec_cycles": c - LATENCY} for _, c, *_ in NAIVE_KERNELS])
    other["kernels"][0]["cycles"] += 1  # an earlier kernel's run of the case
    for result in (kept, other):
        (tmp_path / sim.log_name(sim.result_run(result).label)).write_text(naive_log())
    assert sim.result_run(kept) == sim.SimRun(sim.A100, case, "naive")
    assert sim.reread_logs([{"results": [kept, lost, other]}], tmp_path) == 1
    assert [k["ctas"] for k in kept["kernels"]] == [16, 1, 1, 1] and kept["exec_cycles"] == sum(
        c for _, c, *_ in NAIVE_KERNELS) - 4 * LATENCY
    assert kept["correct"] and kept["error"] == 1e-4  # the check's verdict stays
    assert "ctas" not in lost["kernels"][0] and "ctas" not in other["kernels"][0]


def test_parse_log_refuses_a_log_that_ends_inside_a_kernel():
    log = naive_log()
    with pytest.raises(sim.LogError, match="no kernel finished"):
        sim.parse_log(log[:log.index("kernel_name = ")], LATENCY)
    cut = log.index("total dram reads", log.rindex("kernel_name = "))
    with pytest.raises(sim.LogError, match="kernel 4"):
        sim.parse_log(log[:cut], LATENCY)


def test_version_and_launch_latency_are_read_from_the_log_and_config():
    assert sim.simulator_version(naive_log()).startswith("GPGPU-Sim Simulator Version 4.2.0")
    assert sim.launch_latency("-gpgpu_ptx_sim_mode 0\n-gpgpu_kernel_launch_latency  5000\n") == 5000
    with pytest.raises(sim.LogError):
        sim.launch_latency("-gpgpu_ptx_sim_mode 0\n")


@pytest.mark.parametrize("symbol, name", [
    ("_ZN3eca7kernels11ecaGateNchwI6__halfEEvPKT_S5_PKfPS3_ixxiiix", "ecaGateNchw"),
    ("_ZN50_GLOBAL__N__bde82973_17_sim_eca_kernel_cu_d07b3e5113naiveMeanNchwI6__halfEEvPKT_Pfi", "naiveMeanNchw"),
    ("_Z8warpSumsPKfPf", "warpSums"),
    ("eca_single_launch_f16", "eca_single_launch_f16"),
])
def test_kernel_names_lose_namespaces_and_signatures(symbol, name):
    assert sim.kernel_name(symbol) == name


# --- inputs, check, tables -----------------------------------------------------------------------------------------

def test_expected_output_is_the_reference_in_the_runs_layout():
    case = bench.Case(bench.LayerShape(5, 2, 3, 3), 2, "fp32", "channels_last", 1, ("test",))
    x, taps = sim.inputs(case)
    expected = sim.expected_output(sim.SimRun(sim.A100, case, "ours"), x, taps)
    nchw = sim.expected_output(sim.SimRun(sim.A100, bench.Case(case.shape, 2, "fp32", "nchw", 1, ("test",)),
                                          "ours"), x, taps)
    assert expected.shape == (2, 2, 3, 5) and (expected.transpose(0, 3, 1, 2) == nchw).all()
    assert (sim.expected_output(sim.SimRun(sim.A100, case, "copy"), x, taps) == x).all()
    assert sim.scaled_error(expected, nchw.transpose(0, 2, 3, 1)) == 0.0
    corrupted = expected.copy()
    corrupted.flat[7] = float("nan")
    assert sim.scaled_error(corrupted, expected) != sim.scaled_error(corrupted, expected)  # NaN: never within tolerance


def _result(variant: str, exec_cycles: int, kernels: int = 1, layout: str = "nchw", correct: bool = True) -> dict:
    case = bench.Case(bench.LayerShape(320, 7, 7, 3), 1, "fp16", layout, 2, ("eca_mobilenet_v2",))
    return {**sim.run_fields(sim.SimRun(sim.A100, case, variant)), "correct": correct, "error": 0.0,
            "kernels": [{"exec_cycles": exec_cycles // kernels}] * kernels, "exec_cycles": exec_cycles,
            "cycles": exec_cycles + kernels * LATENCY, "dram_read_bytes": 31360, "dram_write_bytes": 0,
            "l2_accesses": 100, "l2_hits": 25}


def test_table_rows_and_targets_compare_variants_of_the_same_case():
    results = [_result("ours", 1500), _result("single", 1500), _result("naive", 6000, kernels=4),
               _result("copy", 1000), _result("ours", 12000, kernels=2, layout="channels_last"),
               _result("naive", 9000, kernels=4, layout="channels_last")]
    rows = sim.comparison_rows(results)[sim.A100]
    assert [r["layout"] for r in rows] == ["nchw", "channels_last"]
    nchw, channels_last = (sim.table_row(r) for r in rows)
    assert nchw[7:13] == (1500, 6000, 1000, 1.5, 0.25, 6500 / 26000)
    assert channels_last[9:11] == (1000, 12.0)  # the copy kernel does not depend on the layout
    lines = sim.target_lines(rows)
    assert lines[0].startswith("- ours <= 1.5x copy (execution): 1 of 2 batch-1 cases; worst 12.00 (C=320 7x7 k=3 fp16 "
                               "channels_last)")
    assert lines[2].startswith("- ours execution <= naive execution: 1 of 2")


def test_before_and_after_pairs_our_runs_of_the_same_case():
    before = [_result("ours", 10000, kernels=2), _result("ours", 9000, kernels=2, layout="channels_last",
                                                          correct=False), _result("naive", 6000, kernels=4)]
    after = [_result("ours", 2500), _result("ours", 8000, layout="channels_last"), _result("copy", 1000)]
    rows = sim.before_rows(before, after)
    assert [row[6] for row in rows] == ["nchw", "channels_last"]
    assert rows[0][7:] == ("5000 / 5000", 10000, "2500", 2500, 0.25, 7500 / 20000)
    assert rows[1][7:] == ("WRONG", "WRONG", "8000", 8000, None, None)


def test_a_later_run_replaces_an_earlier_result_of_the_same_case_and_variant():
    first = {"results": [_result("ours", 9000, kernels=2), _result("naive", 6000, kernels=4), _result("copy", 1000)]}
    second = {"results": [_result("ours", 2500)]}
    latest = sim.latest_results([first, second])
    assert sorted((r["variant"], r["exec_cycles"]) for r in latest) == [("copy", 1000), ("naive", 6000),
                                                                       ("ours", 2500)]


def test_launch_table_shows_each_kernels_placement_beside_the_copys():
    results = [_result("ours", 1500), _result("naive", 6000, kernels=4), _result("copy", 1000)]
    results[0]["kernels"] = [{"exec_cycles": 1500, "ctas": 20, "threads_per_cta": 256, "ctas_per_sm": 2,
                              "ctas_per_sm_limited_by": "regs"}]
    results[0]["instructions"], results[2]["instructions"] = 900, 100
    results[2]["kernels"] = [{"exec_cycles": 1000, "ctas": 98, "threads_per_cta": 256, "ctas_per_sm": 8,
                              "ctas_per_sm_limited_by": "threads"}]
    row = sim.launch_row(sim.comparison_rows(results)[sim.A100][0])
    assert row[6:] == ("20 x 256 (2, regs)", "98 x 256 (8, threads)", 9.0)


def test_a_wrong_result_is_listed_and_never_compared():
    results = [_result("ours", 1500, correct=False), _result("naive", 6000, kernels=4), _result("copy", 1000)]
    text = sim.render_markdown([{"environment": {"simulator": "GPGPU-Sim 4.2.0", "configs": [sim.A100],
                                                 "launch_latency": "5000", "date": "today", "commit": "abc",
                                                 "nvcc": "cuda 11.8"}, "results": results}])
    assert "Wrong or failed results" in text and "| WRONG |" in text
    assert "**Simulated**" in text and "ours <= 1.5x copy" not in text


# --- the simulator itself ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simulator() -> dict[str, str]:
    try:
        return sim.simulator_environment()
    except (RuntimeError, OSError) as error:
        pytest.skip(f"GPGPU-Sim is not set up here ({error}); ../shared/gpusim/setup.sh --check sets it up")


def test_a_tiny_layer_runs_correctly_in_the_simulator(simulator: dict[str, str]):
    case = bench.Case(bench.LayerShape(8, 4, 4, 3), 1, "fp16", "nchw", 1, ("test",))
    driver = sim.build_driver(sim.A100, simulator)
    results = {variant: sim.simulate(sim.SimRun(sim.A100, case, variant), driver, simulator, sim.gpusim_dir(), 600)
               for variant in ("ours", "naive", "copy")}
    assert all(r["correct"] for r in results.values()), {v: r.get("failure", r["error"]) for v, r in results.items()}
    assert [k["name"] for k in results["ours"]["kernels"]] == ["eca_single_launch_f16"]
    assert len(results["naive"]["kernels"]) == 4
    assert results["copy"]["dram_read_bytes"] == 8 * 4 * 4 * 2
    assert all(0 < r["exec_cycles"] < r["cycles"] for r in results.values())
