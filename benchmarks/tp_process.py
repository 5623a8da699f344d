"""tp's training step in a process of its own, for the step benchmarks (`throughput.measure`).

`tp pretrain` on a CPU keeps freed host memory (`tpcli.train.host_memory`), a setting of the
whole process that HF's and TencentPretrain's own scripts do not make. So the benchmarks run tp's
step in a spawned process set up as `tp pretrain` sets up its own, and the other
implementations in theirs under glibc's defaults; the steps alternate over a pipe, one at a
time. `--tp-in-process` keeps tp beside them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from cases import Case


def start_tp_process(case: Case, device: torch.device, in_process: bool, notes: list[str]
                     ) -> TpProcess | None:
    """tp's own process for `case` where `tp_process_reason` allows one (its note added to
    `notes` once), else None and a note saying why not."""
    reason = tp_process_reason(case, device, in_process)
    if reason is None:
        if TP_PROCESS_NOTE not in notes:
            notes.append(TP_PROCESS_NOTE)
        return TpProcess(case, device)
    note = f"tp's step runs beside the others under the default malloc ({reason})"
    if note not in notes:
        notes.append(note)
    return None


def tp_process_reason(case: Case, device: torch.device, in_process: bool) -> str | None:
    """Why tp's step runs in this process, or None when it gets a process of its own: on a CPU
    where `tp pretrain` keeps freed host memory (`tpcli.train.host_memory`), a setting of the
    whole process that HF's and TencentPretrain's own scripts do not make."""
    from tpcli.train.host_memory import reason_not_applied

    if in_process:
        return "--tp-in-process"
    if device.type != "cpu":
        return "not a CPU run"
    if case.build is None:
        return "this case cannot be rebuilt in another process"
    return reason_not_applied()


class TpProcess:
    """tp's training step in a spawned process of its own, set up as `tp pretrain` sets up its
    process (freed host memory kept: `keep_freed_memory`), while HF's and TencentPretrain's
    steps run in this one under glibc's defaults, as their own scripts do. The case is built
    again there (`case.build`, the same seeds: the same weights and batch). Steps are driven
    over a pipe, one at a time, so the processes never run at once."""

    def __init__(self, case: Case, device: torch.device, keep: bool = True) -> None:
        """keep=False: glibc's default malloc in that process too (benchmarks/host_memory.py)."""
        import multiprocessing

        assert case.build is not None
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_tp_process_main, daemon=True,
                                args=(child, case.build, str(device), torch.get_num_threads(),
                                      keep))
        self.proc.start()
        child.close()
        self.call("ready")

    def call(self, *message: Any) -> Any:
        self.conn.send(message)
        ok, value = self.conn.recv()
        if not ok:
            raise SystemExit(f"tp's process failed:\n{value}")
        return value

    def step(self, precision: str, compile_: bool) -> "RemoteStep":
        self.call("make", precision, compile_)
        return RemoteStep(self)

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.conn.send(("stop",))
        self.proc.join(timeout=30)


@dataclass
class RemoteStep:
    """One step of tp's process: call it (-> the loss), `counted()` (FLOPs, loss) or `profile`."""

    owner: TpProcess

    def __call__(self) -> float:
        return self.owner.call("step")

    def counted(self) -> tuple[float, float]:
        return self.owner.call("flops")

    def profile(self, title: str) -> str:
        return self.owner.call("profile", title)

    def usage(self) -> tuple[int, float]:
        """The process's minor page faults and system CPU seconds so far (getrusage)."""
        return self.owner.call("usage")


def _tp_process_main(conn: Any, build: Callable[[], Case], device_name: str,
                     threads: int, keep: bool) -> None:
    import resource
    import traceback

    from throughput import flop_counter, make_step, prepare, profile_table
    from tpcli.train.host_memory import keep_freed_memory

    torch.set_num_threads(threads)
    if keep:
        keep_freed_memory()  # as the training loop does before its first step on a CPU
    device = torch.device(device_name)
    case: Case | None = None
    fn: Callable[[], float] | None = None
    while True:
        command, *rest = conn.recv()
        if command == "stop":
            return
        try:
            out: Any = None
            if command == "ready":
                case = build()
                prepare(case, device, hf=False)
            elif command == "make":
                assert case is not None
                fn = make_step(case.tp, case.tp_batch, False, rest[0], device, rest[1])
            elif command == "step":
                assert fn is not None
                out = fn()
            elif command == "flops":
                assert fn is not None
                counter = flop_counter()
                with counter:
                    loss = fn()
                out = (float(counter.get_total_flops()), loss)
            elif command == "profile":
                assert fn is not None
                out = profile_table(fn, device, rest[0])
            elif command == "usage":
                now = resource.getrusage(resource.RUSAGE_SELF)
                out = (now.ru_minflt, now.ru_stime)
            conn.send((True, out))
        except Exception:  # reported to the parent, which stops with it
            conn.send((False, traceback.format_exc()))


TP_IN_PROCESS_HELP = ("run tp's step in this process under the default malloc, like the others "
                      "(default on a CPU: a process of its own set up as `tp pretrain` sets up "
                      "its own, keeping freed host memory)")
TP_PROCESS_NOTE = ("tp's step runs in a process of its own that keeps freed host memory, as "
                   "`tp pretrain` does on a CPU (`tpcli.train.host_memory`: no page faults for "
                   "the buffers a step frees and makes again); the other implementations run "
                   "under glibc's default malloc, as their own training scripts do "
                   "(--tp-in-process: tp under the defaults too)")
