"""Run the official VBench on a folder of videos. Executed by VBench's own interpreter, not ours.

The ``vbench`` package pins numpy<2 and transformers 4.33 and needs CUDA 11.6-12.1 to build, so it lives in a
separate environment; :mod:`eval.vbench` calls this file there as a subprocess. Standard library and ``vbench``
only: nothing from qarvd is importable in that environment. ``VBENCH_CACHE_DIR`` (set by the caller) holds the
scoring models; ``local=True`` makes VBench read them from there. ``custom_input`` mode takes each video's prompt
from its file name (``<prompt>-<k>.mp4``).
"""
import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", required=True, help="folder of .mp4 files named <prompt>-<k>.mp4")
    parser.add_argument("--output", required=True, help="folder for VBench's <name>_eval_results.json")
    parser.add_argument("--name", required=True, help="result file prefix")
    parser.add_argument("--device", default="cuda", help="torch device for the scoring models")
    parser.add_argument("--dimensions", nargs="+", required=True, help="VBench dimensions to score")
    args = parser.parse_args(argv)

    here = os.path.dirname(os.path.abspath(__file__))  # holds our eval/vbench.py, which must not shadow the package
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    import torch
    import vbench
    from vbench import VBench

    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")  # unused in custom_input
    bench = VBench(torch.device(args.device), full_info, args.output)
    bench.evaluate(
        videos_path=args.videos,
        name=args.name,
        dimension_list=list(args.dimensions),
        local=True,
        mode="custom_input",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
