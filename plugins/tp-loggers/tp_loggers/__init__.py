"""tp's built-in loggers: TensorBoard and Weights & Biases, chosen by name in a recipe
(`pretrain.loggers: [tensorboard]`) or on the command line (`--logger wandb`)."""
