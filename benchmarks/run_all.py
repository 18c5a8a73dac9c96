"""Run every benchmark of the project and print one JSON line each (``make bench``)."""

from benchmarks import compile_speed, rtl_dma


def main() -> None:
    compile_speed.main([])
    rtl_dma.main([])


if __name__ == "__main__":
    main()
