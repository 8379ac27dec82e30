"""The inference config of a bundle: ``configs/inference.json`` (every image in a folder -> a mask of the same size)."""

from __future__ import annotations

from ..data.base import modality_intensity
from ..io.orientation import DISPLAY_AXCODES
from ..transforms.pipelines import intensity_config
from .components import IMPORTS, checkpoint_loader_config, inferer_config, shared_config
from .specs import BundleSpec, dataset_reader

#: a volume bundle's evaluator iteration: reads, segments and writes each volume slab by slab
STREAMED_ITERATION = {
    "_target_": "common.inference.StreamedVolumeIteration",
    "_requires_": "@bundled_code",
    "preprocessing": "@preprocessing",
    "postprocessing": "@postprocessing",
}


def inference_config(spec: BundleSpec) -> dict:
    """``configs/inference.json``: every image in ``dataset_dir`` (or ``datalist``) -> a mask of the same size."""
    reader = dataset_reader(spec)
    three_d = reader.spatial_dims == 3
    suffix = "*.nii*" if three_d else "*.png"
    intensity = intensity_config(modality_intensity([spec.dataset_card.modality]) if three_d else "minmax")
    if three_d:
        load = [
            {"_target_": "LoadImaged", "keys": "image", "image_only": False},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": DISPLAY_AXCODES},
        ]
        save = {"_target_": "common.io.mask_saving.SaveMask3Dd", "keys": "pred", "output_dir": "@output_dir"}
    else:
        load = [{"_target_": "common.transforms.LoadImage2Dd", "keys": "image", "channels": reader.image_channels}]
        save = {
            "_target_": "common.io.mask_saving.SaveMask2Dd",
            "keys": "pred",
            "output_dir": "@output_dir",
            "num_classes": reader.num_classes,
        }
        if reader.multilabel:
            save["channel_names"] = list(reader.label_names)
    postprocessing = (
        [
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": True,
            }
        ]
        if three_d
        else []
    )
    shared = {
        k: v
        for k, v in shared_config(spec, encoder_weights="random").items()
        if k not in ("reader", "dataset_name", "split_file")
    }
    return {
        **shared,
        "imports": IMPORTS + ["$import glob"],
        "dataset_dir": "$@bundle_root + '/sample_data'",
        "input_dir": "@dataset_dir",
        "output_dir": "$@bundle_root + '/predictions'",
        "load_pretrain": True,
        "pretrained_path": "$@ckpt_dir + '/model.pt'",
        "datalist": f"$sorted(glob.glob(os.path.join(@input_dir, '{suffix}')))",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [*load, intensity, {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": {
                "_target_": "common.data.inputs.inference_datalist",
                "_requires_": "@bundled_code",
                "items": "@datalist",
                "where": f"$os.path.join(@input_dir, '{suffix}')",
            },
            # volumes: the data loader hands over file names; the streamed iteration reads them slab by slab
            **({} if three_d else {"transform": "@preprocessing"}),
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0 if three_d else "@num_workers",
        },
        "inferer": inferer_config(spec, "auto"),
        "postprocessing": {"_target_": "Compose", "transforms": [*postprocessing, save]},
        **({"streamed_iteration": STREAMED_ITERATION} if three_d else {}),
        "handlers": [
            checkpoint_loader_config(),
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            **({"iteration_update": "@streamed_iteration"} if three_d else {"postprocessing": "@postprocessing"}),
            "val_handlers": "@handlers",
            "amp": "@amp",
        },
        "initialize": [
            "@bundled_code",
            "$@inferer.prepare_host_memory(@device)",
            "$monai.utils.set_determinism(seed=0)",
        ],
        "run": ["$@evaluator.run()"],
    }
