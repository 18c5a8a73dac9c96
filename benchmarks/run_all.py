"""Run every benchmark of the project and print one JSON line each (``make bench``)."""

from benchmarks import compile_speed, perf_calibration, perf_model, rtl_dma, rtl_tiny, sweep_speed


def main() -> None:
    compile_speed.main([])
    rtl_dma.main([])
    rtl_tiny.main([])
    perf_calibration.main([])
    perf_model.main([])
    sweep_speed.main([])


if __name__ == "__main__":
    main()
