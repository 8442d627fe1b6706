"""What a benchmark run reports, and the table that compares runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class BenchResult:
    name: str
    steps: int
    # Token slots per step over all ranks (padding included): what the hardware computes.
    tokens_per_step: float
    step_time_s: float
    data_time_s: float | None
    peak_memory_gib: float
    flops_per_token: float
    peak_flops: float
    world_size: int = 1
    # Seconds per step of each phase ("forward_backward", "optimizer"), where the run can split it.
    phases_s: dict[str, float] = field(default_factory=dict)
    # Peak bytes a training step allocates above the resting weights and states (an extra step).
    step_peak_bytes: int | None = None
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
        return self.real_tokens_per_step / self.step_time_s

    @property
    def real_tokens_per_step(self) -> float:
        return (
            self.tokens_per_step if self.effective_tokens_per_step is None else self.effective_tokens_per_step
        )

    @property
    def padding_share(self) -> float:
        return 1.0 - self.real_tokens_per_step / self.tokens_per_step

    @property
    def mfu(self) -> float:
        """Model FLOPs of every slot computed (padding too) over the peak: hardware utilisation."""
        return self.flops_per_token * self.tokens_per_sec / self.peak_flops

    def to_dict(self) -> dict:
        return dict(
            asdict(self),
            tokens_per_sec=self.tokens_per_sec,
            tokens_per_sec_per_rank=self.tokens_per_sec / self.world_size,
            effective_tokens_per_sec=self.effective_tokens_per_sec,
            padding_share=self.padding_share,
            mfu=self.mfu,
        )


def _pct(part: float | None, whole: float) -> str:
    return "-" if part is None else f"{100 * part / whole:.1f}%"


def table(results: list[BenchResult]) -> str:
    """One row per run; then each run's ratio against the last one (the baseline)."""
    header = (
        f"{'run':<24}{'tokens/s':>11}{'/rank':>10}{'real tok/s':>12}{'pad':>7}{'MFU':>8}{'step s':>8}"
        f"{'data':>7}{'fwd+bwd':>9}{'optim':>7}{'step peak':>11}{'peak GiB':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        step_peak = "-" if r.step_peak_bytes is None else f"{r.step_peak_bytes / 2**30:.2f} GiB"
        lines.append(
            f"{r.name:<24}{r.tokens_per_sec:>11,.0f}{r.tokens_per_sec / r.world_size:>10,.0f}"
            f"{r.effective_tokens_per_sec:>12,.0f}{100 * r.padding_share:>6.1f}%{100 * r.mfu:>7.2f}%"
            f"{r.step_time_s:>8.3f}{_pct(r.data_time_s, r.step_time_s):>7}"
            f"{_pct(r.phases_s.get('forward_backward'), r.step_time_s):>9}"
            f"{_pct(r.phases_s.get('optimizer'), r.step_time_s):>7}{step_peak:>11}{r.peak_memory_gib:>10.2f}"
        )
    if len(results) > 1:
        base = results[-1]
        for r in results[:-1]:
            line = f"{r.name} / {base.name}: {r.tokens_per_sec / base.tokens_per_sec:.2f}x tokens/s"
            if r.effective_tokens_per_step is not None or base.effective_tokens_per_step is not None:
                line += f", {r.effective_tokens_per_sec / base.effective_tokens_per_sec:.2f}x real tokens/s"
            if r.step_peak_bytes and base.step_peak_bytes:
                line += f", step peak memory {r.step_peak_bytes / base.step_peak_bytes:.2f}x"
            lines.append(line)
    for r in results:
        if r.memory:
            lines.append(
                f"{r.name} per-rank bytes: "
                + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in r.memory.items())
            )
    return "\n".join(lines)
