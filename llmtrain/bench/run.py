"""`launch/bench.py`: run our step loop (and optionally `transformers.Trainer`) and print one table."""

from __future__ import annotations

import json
from pathlib import Path

from llmtrain.bench.result import BenchResult, table
from llmtrain.config import TrainConfig
from llmtrain.dist import destroy, init_distributed, is_main_process
from llmtrain.tracking.console import setup_logging
from llmtrain.train.setup import prepare_data


def run_benchmark(
    cfg: TrainConfig, warmup: int, steps: int, vs_hf: bool, json_path: Path | None = None
) -> list[BenchResult]:
    dist = init_distributed(cfg.trainer.device, cfg.dist.timeout_s)
    setup_logging()
    try:
        data = prepare_data(cfg)
        from llmtrain.bench.ours import bench_llmtrain

        results = [bench_llmtrain(cfg, dist, data, warmup, steps)]
        if vs_hf:
            if dist.world_size > 1:
                raise SystemExit("--vs-hf compares single-process runs; launch without torchrun/deepspeed")
            from llmtrain.bench.hf_trainer import bench_hf_trainer

            results.append(bench_hf_trainer(cfg, dist, data, warmup, steps))
        if is_main_process():
            print(table(results))
            if json_path is not None:
                json_path.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        return results
    finally:
        destroy()
