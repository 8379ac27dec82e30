"""The training and evaluation configs of a bundle: ``configs/train.json`` and its overlays ``evaluate.json``,
``raw_btcv.json`` (Synapse), ``multi_gpu_train.json`` and ``multi_gpu_evaluate.json``."""

from __future__ import annotations

from ..data import get_dataset
from ..transforms.pipelines import eval_transforms_config, train_transforms_config, volume_transforms_config
from .components import checkpoint_loader_config, inferer_config, shared_config
from .specs import BundleSpec, checkpoint_selection, class_names, dataset_reader, published_metrics


def _evaluation_section(spec: BundleSpec, handlers: list) -> dict:
    """``validate``: datalist, preprocessing, loader, inferer, post-processing and evaluator (validation split)."""
    reader = dataset_reader(spec)
    postprocessing = (
        []
        if reader.multilabel
        else [{"_target_": "AsDiscreted", "keys": ["pred", "label"], "to_onehot": [reader.num_classes] * 2}]
    )
    return {
        "datalist": "$@reader.datalists(@dataset_dir, @split_file)['validation']",
        "preprocessing": eval_transforms_config(reader, "@spatial_size"),
        "dataset": {"_target_": "Dataset", "data": "@validate#datalist", "transform": "@validate#preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@validate#dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": "@num_workers",
        },
        "inferer": inferer_config(spec, "float32"),
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        "key_metric": {
            "val_mean_dice": {
                "_target_": "common.evaluation.ClassMeanDice",
                "include_background": bool(reader.multilabel),
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            }
        },
        "handlers": handlers,
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
            "inferer": "@validate#inferer",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "@validate#key_metric",
            "val_handlers": "@validate#handlers",
            "amp": "@amp",
        },
    }


def _loss(spec: BundleSpec) -> dict:
    recipe = spec.training_recipe
    if recipe.loss == "boundary_dou":
        base = {"_target_": "common.training.BoundaryDoULoss"}
    else:
        base = {
            "_target_": "common.training.DiceCrossEntropyLoss",
            "lambda_dice": recipe.dice_weight,
            "lambda_ce": recipe.ce_weight,
            "sigmoid": bool(dataset_reader(spec).multilabel),
        }
    return {"_target_": "common.training.DeepSupervisionLoss", "loss": base}


def _training_dataset(reader, datalist: str, seed: str) -> dict:
    """``train#dataset``: pictures map one to one; volumes are cut into axial slices (:mod:`common.training.datasets`)."""
    dataset = {
        "_target_": "common.training.training_dataset",
        "dataset": "@reader",
        "datalist": datalist,
        "transform": "@train#preprocessing",
        "seed": seed,
    }
    if reader.stored_as != "slices":
        dataset["volume_transform"] = "@train#volume_preprocessing"
    return dataset


def train_config(spec: BundleSpec) -> dict:
    """``configs/train.json``: the published recipe through MONAI's SupervisedTrainer.

    ``train#preprocessing`` is the augmentation of one picture or slice; bundles whose dataset is stored as volumes
    also have ``train#volume_preprocessing`` (load, orient, normalise a volume before it is sliced).
    """
    recipe = spec.training_recipe
    reader = dataset_reader(spec)
    resume_objects = {"network": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"}
    loss_output = "$monai.handlers.from_engine(['loss'], first=True)"
    validate = _evaluation_section(
        spec,
        [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "iteration_log": False},
            {
                "_target_": "CheckpointSaver",
                "save_dir": "@ckpt_dir",
                "save_dict": {"model": "@network"},
                "save_key_metric": True,
                "key_metric_filename": "model.pt",
            },
        ],
    )
    preprocessing = {"preprocessing": train_transforms_config(reader, "@spatial_size")}
    if reader.stored_as != "slices":
        preprocessing["volume_preprocessing"] = volume_transforms_config(reader)
    return {
        **shared_config(spec, encoder_weights=None),
        "output_dir": "$@bundle_root + '/runs'",
        "load_pretrain": False,
        "pretrained_path": "$@ckpt_dir + '/model.pt'",
        "epochs": recipe.epochs,
        "warmup_epochs": recipe.warmup_epochs,
        "batch_size": recipe.batch_size,
        "learning_rate": recipe.learning_rate,
        "weight_decay": recipe.weight_decay,
        "val_interval": 1,
        "seed": 42,
        "iterations_per_epoch": {
            "_target_": "common.training.iterations_per_epoch",
            "dataset": "@train#dataset",
            "batch_size": "@batch_size",
            "reader": "@reader",
        },
        "loss": _loss(spec),
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "params": {
                "_target_": "common.training.decay_param_groups",
                "network": "@network",
                "weight_decay": "@weight_decay",
            },
            "lr": "@learning_rate",
            "betas": [0.9, 0.999],
            "eps": 1e-8,
        },
        "lr_scheduler": {
            "_target_": "common.training.WarmupCosineLR",
            "optimizer": "@optimizer",
            "warmup_steps": "$@warmup_epochs * @iterations_per_epoch",
            "total_steps": "$@train#trainer#max_epochs * @iterations_per_epoch",
        },
        "train": {
            "datalist": "$@reader.datalists(@dataset_dir, @split_file)['train']",
            **preprocessing,
            "dataset": _training_dataset(reader, "@train#datalist", "@seed"),
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@train#dataset",
                "batch_size": "@batch_size",
                "shuffle": "$not isinstance(@train#dataset, torch.utils.data.IterableDataset)",
                "num_workers": "@num_workers",
            },
            "inferer": {"_target_": "SimpleInferer"},
            "handlers": [
                checkpoint_loader_config(),
                {
                    "_target_": "common.training.ResumeFromLatest",
                    "directory": "@ckpt_dir",
                    "objects": resume_objects,
                    "map_location": "@device",
                },
                {"_target_": "common.training.GradientClipping", "max_norm": 1.0},
                {
                    "_target_": "LrScheduleHandler",
                    "lr_scheduler": "@lr_scheduler",
                    "epoch_level": False,
                    "print_lr": False,
                },
                {
                    "_target_": "ValidationHandler",
                    "validator": "@validate#evaluator",
                    "epoch_level": True,
                    "interval": "@val_interval",
                },
                {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": loss_output},
                {
                    "_target_": "TensorBoardStatsHandler",
                    "log_dir": "@output_dir",
                    "tag_name": "train_loss",
                    "output_transform": loss_output,
                },
                {"_target_": "ignite.handlers.ProgressBar", "persist": True},
                {"_target_": "common.training.SaveForResume", "directory": "@ckpt_dir", "objects": resume_objects},
            ],
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": "@epochs",
                "epoch_length": "@iterations_per_epoch",
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "inferer": "@train#inferer",
                "train_handlers": "@train#handlers",
                "amp": "@amp",
            },
        },
        "validate": validate,
        "initialize": ["@bundled_code", "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train#trainer.run()"],
    }


def evaluate_config(spec: BundleSpec) -> dict:
    """``configs/evaluate.json``: an overlay on train.json (the model zoo's
    ``--config_file "['configs/train.json','configs/evaluate.json']"``) that runs ``validate#evaluator`` on the test
    split with the paper's protocol and writes per-case and summary CSVs."""
    reader = dataset_reader(spec)
    mode = "multilabel" if reader.multilabel else ("volume" if reader.spatial_dims == 3 else "image")
    names = class_names(spec)
    writer = {
        "_target_": "common.evaluation.CaseMetricsWriter",
        "output_dir": "@output_dir",
        "class_names": names if reader.multilabel else names[1:],
        "mode": mode,
        "published": "@published",
        "title": "ours",
        "paper_rule": "transunet" if spec.dataset == "synapse" else "per_class",
        "selection": (
            {
                "_target_": "common.data.synapse.selection_text",
                "_requires_": "@bundled_code",
                "validation": "@validation",
            }
            if spec.dataset == "synapse"
            else checkpoint_selection(spec)
        ),
    }
    return {
        "encoder_weights": "random",
        "output_dir": "$@bundle_root + '/eval'",
        "published": published_metrics(spec),
        "validate#datalist": "$@reader.datalists(@dataset_dir, @split_file)['test']",
        "validate#handlers": [
            checkpoint_loader_config("$@ckpt_dir + '/model.pt'", switch=None),
            {"_target_": "StatsHandler", "iteration_log": False},
            writer,
        ],
        "dataset": "@validate#dataset",
        "inferer": "@validate#inferer",
        "evaluator": "@validate#evaluator",
        "initialize": ["@bundled_code", "$monai.utils.set_determinism(seed=0)"],
        "run": ["$@validate#evaluator.run()"],
    }


_DDP_DEVICE = "$torch.device(f'cuda:{os.environ[\"LOCAL_RANK\"]}' if torch.cuda.is_available() else 'cpu')"
_DDP_NETWORK = {
    "_target_": "torch.nn.parallel.DistributedDataParallel",
    "module": "$@network_def.to(@device)",
    "device_ids": "$[@device] if torch.cuda.is_available() else None",
}
_DDP_INIT = [
    "@bundled_code",
    "$import torch.distributed as dist",
    "$dist.is_initialized() or dist.init_process_group(backend=@backend)",
    "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None",
]
_RANK_SLICE = "[torch.distributed.get_rank()::torch.distributed.get_world_size()]"


def multi_gpu_config(spec: BundleSpec) -> dict:
    """``configs/multi_gpu_train.json``: overrides of train.json for ``torchrun`` (NCCL on GPUs, gloo on CPUs)."""
    reader = dataset_reader(spec)
    return {
        "device": _DDP_DEVICE,
        "backend": "$'nccl' if torch.cuda.is_available() else 'gloo'",
        "network": _DDP_NETWORK,
        "train#dataset": _training_dataset(
            reader, f"$@train#datalist{_RANK_SLICE}", "$@seed + torch.distributed.get_rank()"
        ),
        "validate#datalist": f"$@reader.datalists(@dataset_dir, @split_file)['validation']{_RANK_SLICE}",
        "train#trainer#train_handlers": "$@train#handlers if torch.distributed.get_rank() == 0 else "
        "[h for h in @train#handlers if type(h).__name__ in ('CheckpointLoader', "
        "'ResumeFromLatest', 'GradientClipping', 'LrScheduleHandler', "
        "'ValidationHandler')]",
        "validate#evaluator#val_handlers": "$@validate#handlers if torch.distributed.get_rank() == 0 else None",
        "initialize": [*_DDP_INIT, "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train#trainer.run()"],
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }


def raw_btcv_config(spec: BundleSpec) -> dict:
    """``configs/raw_btcv.json`` (Synapse bundles): an overlay on train.json (and evaluate.json after it) that reads
    the raw BTCV NIfTI layout (``synapse_raw``: volumes windowed and relabelled here) instead of TransUNet's
    pre-processed release, with that layout's transforms from the same recipe functions."""
    raw = get_dataset("synapse_raw")
    return {
        "dataset_name": "synapse_raw",
        "train#preprocessing": train_transforms_config(raw, "@spatial_size"),
        "train#volume_preprocessing": volume_transforms_config(raw),
        "train#dataset#volume_transform": "@train#volume_preprocessing",
        "validate#preprocessing": eval_transforms_config(raw, "@spatial_size"),
    }


def multi_gpu_evaluate_config(spec: BundleSpec) -> dict:
    """``configs/multi_gpu_evaluate.json``: overrides of train.json + evaluate.json for ``torchrun``.

    Each process evaluates every ``world_size``-th test case; MeanDice is gathered across processes, and the
    per-case CSV writer gathers the rows of every process on rank 0.
    """
    return {
        "device": _DDP_DEVICE,
        "backend": "$'nccl' if torch.cuda.is_available() else 'gloo'",
        "network": _DDP_NETWORK,
        "validate#datalist": f"$@reader.datalists(@dataset_dir, @split_file)['test']{_RANK_SLICE}",
        "initialize": [*_DDP_INIT, "$monai.utils.set_determinism(seed=0)"],
        "run": ["$@validate#evaluator.run()"],
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }
