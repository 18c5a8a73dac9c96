"""Run every benchmark of the project and print one JSON line each (``make bench``)."""


from accel.args import ArgumentParser, run_command
from benchmarks import (
    batch_decode,
    calibration_size,
    compile_speed,
    context_switch,
    dram_queue,
    fuzz_builds,
    fuzz_programs,
    int_vs_float,
    kv_budget,
    kv_chunk_timing,
    kv_compression,
    kv_device,
    kv_waste,
    l2_conflicts,
    ladder,
    matmul_calibration,
    mxint4,
    perf_calibration,
    perf_model,
    quant_ablation,
    rtl_build,
    rtl_dma,
    rtl_gemm,
    rtl_layer_decode,
    rtl_overlap,
    rtl_pairs,
    rtl_prefill,
    rtl_stores,
    rtl_table_walks,
    rtl_tiny,
    sweep_speed,
    vector_calibration,
)


def main(argv=None) -> None:
    ArgumentParser(prog="python -m benchmarks.run_all",
                   description=__doc__).parse_args(argv)
    compile_speed.main([])
    rtl_build.main([])
    rtl_dma.main([])
    rtl_tiny.main([])
    ladder.main([])
    int_vs_float.main([])
    quant_ablation.main([])
    calibration_size.main([])
    kv_compression.main([])
    kv_waste.main([])
    context_switch.main([])
    batch_decode.main(["--rtl"])
    kv_device.main(["--rtl"])
    kv_chunk_timing.main([])
    kv_budget.main([])
    kv_budget.main(["--model", "tiny", "--hw", "edge-8x8", "--at", "200",
                    "--dram-bytes-per-cycle", "4", "32", "--bits", "8", "4", "2", "--exact"])
    mxint4.main([])
    rtl_gemm.main([])
    perf_calibration.main([])
    rtl_overlap.main([])
    rtl_pairs.main([])
    rtl_pairs.main(["--hw", "edge-16x16"])
    rtl_table_walks.main([])
    rtl_stores.main([])
    l2_conflicts.main([])          # Amaranth's simulator: a few minutes
    dram_queue.main([])
    matmul_calibration.main([])
    vector_calibration.main([])
    perf_model.main([])
    sweep_speed.main([])
    fuzz_builds.main([])
    fuzz_programs.main([])
    rtl_layer_decode.main([])
    rtl_prefill.main([])          # the longest: a 128-token prefill of a 2048-wide layer
    rtl_prefill.main(["--hw", "edge-16x16", "--l2", str(8 << 20)])   # as one chunk


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.run_all")
