"""The distribution strategies behind `tpcli.train.strategy.Strategy`: single, ddp, fsdp,
deepspeed (imported lazily by `make_strategy`)."""
