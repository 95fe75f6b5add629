"""Training: composable loss terms, the optax training loop and evaluation."""

from biojax.train import losses
from biojax.train.config import TrainConfig
from biojax.train.evaluate import evaluate_file
from biojax.train.loop import train_and_evaluate
from biojax.train.losses import LossTerm, combine

__all__ = ["losses", "TrainConfig", "evaluate_file", "train_and_evaluate", "LossTerm",
           "combine"]
