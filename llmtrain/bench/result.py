"""What a benchmark run reports, and the table that compares runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class BenchResult:
    name: str
    steps: int
    tokens_per_step: int
    step_time_s: float
    data_time_s: float
    peak_memory_gib: float
    flops_per_token: float
    peak_flops: float
    world_size: int = 1
    memory: dict[str, int] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    # Non-padding tokens per step (all ranks). None: every slot is a real token (pretraining windows).
    effective_tokens_per_step: float | None = None

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens_per_step / self.step_time_s

    @property
    def effective_tokens_per_sec(self) -> float:
        """Real (non-pad) tokens per second: the number that compares packed with padded SFT."""
        real = (
            self.tokens_per_step if self.effective_tokens_per_step is None else self.effective_tokens_per_step
        )
        return real / self.step_time_s

    @property
    def mfu(self) -> float:
        return self.flops_per_token * self.tokens_per_sec / self.peak_flops

    def to_dict(self) -> dict:
        return dict(
            asdict(self),
            tokens_per_sec=self.tokens_per_sec,
            effective_tokens_per_sec=self.effective_tokens_per_sec,
            mfu=self.mfu,
        )


def table(results: list[BenchResult]) -> str:
    header = f"{'run':<22}{'tokens/s':>12}{'/rank':>10}{'MFU':>8}{'step s':>9}{'data %':>8}{'peak GiB':>10}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.name:<22}{r.tokens_per_sec:>12,.0f}{r.tokens_per_sec / r.world_size:>10,.0f}"
            f"{100 * r.mfu:>7.2f}%{r.step_time_s:>9.3f}{100 * r.data_time_s / r.step_time_s:>7.1f}%"
            f"{r.peak_memory_gib:>10.2f}"
        )
    if len(results) > 1:
        base = results[-1]
        for r in results[:-1]:
            lines.append(f"{r.name} / {base.name}: {r.tokens_per_sec / base.tokens_per_sec:.2f}x tokens/s")
    for r in results:
        if r.effective_tokens_per_step is not None:
            lines.append(
                f"{r.name}: {r.effective_tokens_per_sec:,.0f} non-pad tokens/s "
                f"({100 * r.effective_tokens_per_step / r.tokens_per_step:.1f}% of the seq_len slots)"
            )
    mem = [r for r in results if r.memory]
    for r in mem:
        lines.append(
            f"{r.name} per-rank bytes: " + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in r.memory.items())
        )
    return "\n".join(lines)
