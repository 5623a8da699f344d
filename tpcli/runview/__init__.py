"""Seeing runs (`tp runs`): what a run folder holds, read without importing torch.

`read` finds run folders (pre-training's and fine-tuning's) and reads each one's recipe, steps,
losses, best evaluation and state (finished, running, stopped with the command that resumes it,
failed with why); `compare` lists the recipe keys that differ between runs; `plot` draws metric
curves with TensorBoard's smoothing, in the terminal or (matplotlib) to a PNG. The files read are
the ones `tpcli.train.run_folder` writes; nothing here writes into a run.
"""
