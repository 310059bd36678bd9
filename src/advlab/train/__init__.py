"""The training engine: one loop (:func:`fit`) whose step function is swappable, events, metrics, recipes,
and :func:`train_model`, the one standard run (data, seeding, model, recipe, test accuracy) behind
``advlab train``.

Example::

    from advlab.train import get_recipe, save_run, train_model

    run = train_model("cnn-small", "digits", get_recipe("cnn-small", "digits"), seed=0)
    print(run.summary["test_accuracy"])
    save_run(run, "runs/cnn-small-digits")

The loop on its own::

    import torch
    from advlab import create_model, load_dataset
    from advlab.train import evaluate_accuracy, fit, get_recipe

    x, y = load_dataset("digits", "train")
    torch.manual_seed(0)                       # initialisation is the caller's business
    model = create_model("cnn-small", dataset="digits")
    history = fit(model, x, y, seed=0, **get_recipe("cnn-small", "digits").fit_kwargs())
    print(history.epochs[-1].loss, evaluate_accuracy(model, *load_dataset("digits", "test")))

Several processes (DistributedDataParallel, see :mod:`advlab.train.distributed`)::

    torchrun --nproc_per_node 2 -m advlab train --model cnn-small --data mnist --defense fast-at --eps 0.3 --out runs/x
"""

from __future__ import annotations

from advlab.train._sklearn_fit import FIT_CONFIGS
from advlab.train.callbacks import Callback, ProgressBar, TrainState
from advlab.train.distributed import (
    distributed_session,
    init_distributed,
    is_main_process,
    shutdown_distributed,
    world_size,
)
from advlab.train.loop import EpochRecord, TrainHistory, evaluate_accuracy, fit
from advlab.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_scheduler
from advlab.train.recipes import DEFAULT_RECIPE, OVERRIDES, RECIPES, Recipe, get_recipe, prepare_model
from advlab.train.run import TrainRun, save_run, train_model
from advlab.train.steps import StepContext, StepFn, StepOutput, standard_step

__all__ = [
    "DEFAULT_RECIPE",
    "FIT_CONFIGS",
    "OPTIMIZERS",
    "OVERRIDES",
    "RECIPES",
    "SCHEDULES",
    "Callback",
    "EpochRecord",
    "ProgressBar",
    "Recipe",
    "StepContext",
    "StepFn",
    "StepOutput",
    "TrainHistory",
    "TrainRun",
    "TrainState",
    "distributed_session",
    "evaluate_accuracy",
    "fit",
    "get_recipe",
    "init_distributed",
    "is_main_process",
    "make_optimizer",
    "make_scheduler",
    "prepare_model",
    "save_run",
    "shutdown_distributed",
    "standard_step",
    "train_model",
    "world_size",
]
