"""The prose files of a bundle: model card (docs/README.md), data licence, LICENSE, large_files.yml."""

from __future__ import annotations

import json

from ..data.input_size import INPUT_SIZE
from ..networks import network_facts
from ..networks.papers import GDLA_TABLE_COMPLEXITY, MLLA_UNET_COMPLEXITY
from ..networks.scripting import FIXED_SIZE_NETWORKS, SCRIPT_EXAMPLE_SIZE, torchscript_obstacle
from ..transforms.pipelines import eval_transforms_config
from .metadata import metadata
from .specs import OVERLAYS, BundleSpec, checkpoint_selection, citations, class_names, dataset_reader, published_metrics


def _paper_counts(network: str) -> str:
    """The GDLA paper's Params and FLOPs of ``network`` as a phrase."""
    params, flops = GDLA_TABLE_COMPLEXITY[network]
    return f"{params:.2f} M parameters, {flops:.2f} G FLOPs as the paper counts them"


ARCHITECTURES = {
    "pvt_gdla": "PVT-v2-b2 encoder; three decoder blocks with Gated Differential Linear Attention (two linear-attention "
    "subspaces subtracted with a learnable per-channel lambda, a local depthwise/pointwise token-mixing pass, "
    "RMSNorm and a sigmoid gate) and Mix-FFN; additive skips; a full-resolution residual branch; four "
    f"deep-supervision heads. {_paper_counts('pvt_gdla')}.",
    "pvt_linearattn": "PVT-v2-b2 encoder; decoder blocks with ELU+1 kernel linear attention and a GELU MLP "
    f"({_paper_counts('pvt_linearattn')}).",
    "pvt_selfattn": "PVT-v2-b2 encoder; decoder blocks with softmax self-attention and rotary position embedding, "
    f"GELU MLP ({_paper_counts('pvt_selfattn')}).",
    "pvt_diffattn": "PVT-v2-b2 encoder; decoder blocks with Differential Transformer attention and a SwiGLU FFN "
    f"({_paper_counts('pvt_diffattn')}).",
    "pvt_emcad": "PVT-v2-b2 encoder with the EMCAD decoder (Rahman et al., CVPR 2024): multi-scale convolutional "
    "attention modules, efficient up-convolution blocks and large-kernel grouped attention gates on the skips; "
    "four prediction heads.",
    "pvt_emcad_xattnres": "PVT-EMCAD-B2 with cross-stage attention residuals (XAttnRes): before each decoder stage a "
    "learned softmax over the history of all earlier stage outputs (aligned by resizing and 1x1 projections) "
    "replaces the stage input.",
    "pvt_gdla_xattnres": "PVT-GDLA with cross-stage attention residuals (XAttnRes) over the history of all earlier "
    "encoder and decoder stage outputs.",
    "mlla_unet": "MLLA-UNet (MLLA-T): a U-shaped network of Mamba-like linear attention blocks (linear attention with "
    "2-D rotary embedding and LePE, gated like Mamba), EDSM down-sampling and EUSM up-sampling; "
    f"about {MLLA_UNET_COMPLEXITY[0]} M parameters and {MLLA_UNET_COMPLEXITY[1]} G MACs at 224 x 224.",
    "setr": "SETR: a ViT-S/16 encoder with progressive up-sampling; key-value attention (no query projection, "
    "symmetric attention logits) by default, `attention` = qkv / kv / kv_pos.",
    "transunet": "TransUNet: ResNet-50 stages with a ViT-S transformer on the 1/16 map and a cascaded up-sampler with "
    "skips; key-value attention by default, `attention` = qkv / kv / kv_pos.",
    "cvt": "CvT-13 (convolutional token embedding and projections) with a cascaded decoder; key-value attention over "
    "the strided tokens by default, `attention` = qkv / kv / kv_pos.",
}

REFERENCE_NETWORKS = ("pvt_gdla", "pvt_linearattn", "pvt_selfattn", "pvt_diffattn")
REFERENCE_NOTE = (
    " The authors' published checkpoint loads with\n`common.networks.convert.load_reference_checkpoint(network, path)`."
)


def _recipe_text(spec: BundleSpec) -> str:
    recipe = spec.training_recipe
    loss = (
        "Boundary DoU loss"
        if recipe.loss == "boundary_dou"
        else f"{recipe.ce_weight} cross-entropy + {recipe.dice_weight} Dice loss"
    )
    facts = network_facts(spec.network)
    if facts.deep_supervision:
        loss += " summed over the four deep-supervision outputs"
    if facts.encoder_weights_file is not None:
        encoder = (
            f"The encoder starts from the ImageNet PVT-v2-b2 weights (`{facts.encoder_weights_file}` of the "
            "PVT v2 release): "
            "pass them with `--encoder_weights`; without them the run warns that the encoder is random and "
            "will not reach the published numbers."
        )
    else:
        encoder = "The network starts from random weights."
    return (
        f"Source: {recipe.source}. AdamW (lr {recipe.learning_rate}, betas 0.9/0.999, weight decay "
        f"{recipe.weight_decay}, none on biases and 1-D parameters), gradient clipping at 1.0, per-iteration cosine "
        f"schedule over the whole run with a linear warm-up over its first {recipe.warmup_epochs} epochs (from 1e-6, "
        f"to 1e-6; timm's CosineLRScheduler as the authors use it), {recipe.epochs} epochs, "
        f"batch {recipe.batch_size}, fp32, seed 42, {loss}; best checkpoint by mean validation Dice. {encoder}"
    )


def _config_file_option(config: str) -> str:
    """``--config_file``'s value for an overlay ``config`` (:data:`common.bundle.specs.OVERLAYS`), quoted for a shell."""
    return '"[' + ",".join(f"'configs/{name}.json'" for name in OVERLAYS[config]) + ']"'


def _encoder_weights_option(spec: BundleSpec) -> str:
    """The training command's ``--encoder_weights`` option, for networks that start from encoder weights."""
    weights_file = network_facts(spec.network).encoder_weights_file
    return f" --encoder_weights /path/to/{weights_file}" if weights_file else ""


def _results_table(spec: BundleSpec) -> str:
    metrics = published_metrics(spec)
    if not metrics:
        return "The paper reports no row for this model on this dataset."
    rows = ["| metric | published |", "|---|---|"]
    for name, value in metrics.get("class_dice", {}).items():
        rows.append(f"| Dice {name} (%) | {value:.2f} |")
    rows.append(f"| mean Dice (%) | {metrics['mean_dice']:.2f} |")
    if "hd95" in metrics:
        rows.append(f"| HD95 (voxels) | {metrics['hd95']:.2f} |")
    return "\n".join(rows)


def _streaming_note(spec: BundleSpec) -> str:
    """How a volume bundle's inference.json reads its inputs (nothing for picture bundles)."""
    if dataset_reader(spec).spatial_dims != 3:
        return ""
    return (
        "\n\nVolumes are segmented slab by slab (`streamed_iteration`, `common.inference.bundle_streaming`): the data loader "
        "hands over file names, each volume (NIfTI, NRRD, MetaImage or a DICOM series folder in `--datalist`) is "
        "read, oriented, scaled, segmented and written a few slices at a time with the transforms in "
        "`preprocessing`, and `postprocessing` runs without its `Invertd` on labels already on the input's grid. "
        "Memory is a constant plus one byte per voxel of the label map, whatever the volume's size. A case that "
        "cannot be read is logged and the others go on; the run then ends with an error naming each such file."
    )


def _held_out_note(spec: BundleSpec) -> str:
    if spec.dataset != "synapse":
        return ""
    return "; `--validation held_out` selects it on 4 of the 18 training cases instead (14 left for training)"


#: an argument of each intensity transform worth showing in a command-line override, with a value
INTENSITY_OVERRIDES = {
    "ScaleIntensityRanged": ("a_max", "400"),
    "ScaleIntensityd": ("maxv", "255.0"),
    "NormalizeIntensityd": ("nonzero", "True"),
    "Orientationd": ("axcodes", "RAS"),
}


def _override_example(spec: BundleSpec) -> str:
    """A command-line override of the validation intensity transform, with its real position in the list."""
    transforms = eval_transforms_config(dataset_reader(spec), "@spatial_size")["transforms"]
    index, step = next((i, t) for i, t in enumerate(transforms) if t["_target_"] in INTENSITY_OVERRIDES)
    argument, value = INTENSITY_OVERRIDES[step["_target_"]]
    return f"`--validate#preprocessing#transforms#{index}#{argument} {value}` sets `{argument}` of `{step['_target_']}`"


#: the model zoo's TorchScript export with its defaults, run in the bundle folder (``torch.jit.script``)
TORCHSCRIPT_COMMAND = (
    "python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt "
    "--meta_file configs/metadata.json --config_file configs/inference.json"
)


def _shell_lines(command: str) -> str:
    """``command`` on two shell lines, broken before ``--meta_file``."""
    first, rest = command.split(" --meta_file ", 1)
    return f"{first} \\\n    --meta_file {rest}"


#: What ``onnx_export`` leaves behind (MONAI 1.6 with PyTorch's dynamo exporter), and how to keep it out of /tmp.
ONNX_EXPORT_NOTE = (
    "`onnx_export` exports to a temporary file first, and PyTorch's exporter writes the weights beside it as "
    "`tmpXXXXXXXX.data`, which MONAI (1.6) does not remove: a copy of the weights stays in the system's temporary "
    "folder after every export. Run it as `TMPDIR=$(mktemp -d) python -m monai.bundle onnx_export ...` and remove "
    "that folder afterwards."
)


def _torchscript_note(spec: BundleSpec) -> str:
    """Why TorchScript export saves a trace of this network, and what the file holds."""
    size, channels = SCRIPT_EXAMPLE_SIZE, dataset_reader(spec).image_channels
    fixed = spec.network in FIXED_SIZE_NETWORKS
    return (
        f"`torch.jit.script`, which that command runs, cannot compile `{spec.network}` as written: "
        f"{torchscript_obstacle(spec.network)}. The network therefore answers it with its eval-mode trace on a "
        f"[1, {channels}, {size}, {size}] image (`common.networks.scripting`): the graph that `--use_trace True` "
        "writes with the metadata's input shape (`torchscript_export` in the metadata), the inference network "
        "without training-mode outputs. "
        + (
            f"The trace takes {size} x {size} inputs only: the position embedding's resizing is fixed at that size."
            if fixed
            else "The trace takes other input sizes too (sides divisible by the network's stride)."
        )
    )


def model_card(spec: BundleSpec) -> str:
    """docs/README.md: what the model is, the data and its licence, the recipe, results, how to reproduce."""
    reader, card = dataset_reader(spec), spec.dataset_card
    names = class_names(spec)
    size = f"{INPUT_SIZE[0]} x {INPUT_SIZE[1]}"
    if reader.multilabel:
        protocol = f"Dice and Jaccard per channel and image at {size} (sigmoid channels thresholded at 0.5)"
    elif reader.spatial_dims == 3:
        protocol = (
            "3-D Dice and HD95 per volume and class (background excluded; a class absent from a volume's "
            f"ground truth is skipped), volumes predicted slice by slice at {size} (cubic spline in, "
            "nearest out)"
        )
    else:
        protocol = f"foreground Dice per image at {size}, over images with a non-empty mask"
    meta = metadata(spec)
    monai, torch, version = meta["monai_version"], meta["pytorch_version"], meta["version"]
    packages = " ".join(f'"{name}=={v}"' for name, v in meta["required_packages_version"].items())
    suffix, ext = ("*.nii*", ".nii.gz") if reader.spatial_dims == 3 else ("*.png", ".png")
    return f"""# {spec.paper_model} for {card.title}

{ARCHITECTURES[spec.network]}

Network: `common.networks.create_network("{spec.network}", in_channels={reader.image_channels}, num_classes={reader.num_classes})`.
Input: {reader.image_channels}-channel {card.modality} image scaled to [0, 1], {size};
output: {reader.num_classes} channels ({", ".join(f"{i} {n}" for i, n in enumerate(names))}).

## Data

{card.title}. Source: {card.source}

Licence: {card.license} See `docs/data_license.txt`.

Point `dataset_dir` at the folder exactly as downloaded; check it first with
`python -m common data check --dataset {spec.dataset} --root /path/to/data`.

## Training recipe

{_recipe_text(spec)}

## Published results

Evaluation protocol: {protocol}. {checkpoint_selection(spec).capitalize()}{_held_out_note(spec)}.
Evaluation prints two metric modes: `paper` (the rules of the code behind the table) and `clinical`
(HD95 in mm from the real geometry, NaN where undefined); see `docs/reproducing.md`.

{_results_table(spec)}

## Get and run it outside the repository

A release archive (`python -m common release pack`) is the whole bundle: configs, this card, the weights
(`models/model.pt`) and the code its configs import (`scripts/common`). It needs only the packages in
`configs/metadata.json` (`torch`, `numpy`, `monai` and `required_packages_version`), all on PyPI:

```bash
pip install "monai=={monai}" "torch=={torch}" {packages}
python -m monai.bundle download --name {spec.name} --url <release URL>/{spec.name}_v{version}.zip --bundle_dir .
python -m monai.bundle run --config_file {spec.name}/configs/inference.json --bundle_root {spec.name} \\
    --dataset_dir /path/to/images --output_dir masks
```

`python -m common release download --url ... --sha256 ...` does the same download but checks the archive's published
SHA-256 first. Inference reads every `{suffix}` file in `dataset_dir` (`input_dir` is the same setting), or the files
given as `--datalist "['a{ext}', 'b{ext}']"` (paths, or dicts with an `image` key); it stops with an error when there
is nothing to segment. `--load_pretrain False` runs without weights (a smoke test).{_streaming_note(spec)}

## Reproduce

From this folder (add `--dataset_dir /path/to/data` to each command):

```bash
python -m monai.bundle run --config_file configs/train.json{_encoder_weights_option(spec)}
python -m monai.bundle run --config_file {_config_file_option("evaluate")}
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/images
torchrun --standalone --nproc_per_node=2 -m monai.bundle run \\
    --config_file {_config_file_option("multi_gpu_train")}
torchrun --standalone --nproc_per_node=2 -m monai.bundle run \\
    --config_file {_config_file_option("multi_gpu_evaluate")}
```

`evaluate.json` is an overlay on `train.json`: it points `validate#datalist` at the test split and adds the
per-case metric writer. `train.json` starts from `models/model.pt` with `--load_pretrain True` (fine-tuning).
The transforms are in the configs as lists of MONAI transforms (`train#preprocessing`, `validate#preprocessing`,
`preprocessing` and `postprocessing` in `inference.json`); change one from the command line by its id, e.g.
{_override_example(spec)}.

A killed training run started again with the same command resumes from its last complete epoch
(`models/last_checkpoint_*.pt`). Evaluation writes `eval/cases.csv` and `eval/summary.csv` and prints our row
beside the published one.{REFERENCE_NOTE if spec.network in REFERENCE_NETWORKS else ""}

Evaluation runs the network in float32, as the authors did (`"precision": "float32"` in `validate#inferer`).
Inference runs `"precision": "auto"`: float16 autocast on CUDA, bfloat16 on CPUs with native bfloat16
(AVX512-BF16, AMX), float32 elsewhere; add `--inferer#precision float32` for the authors' arithmetic.

## Export

MONAI's export commands work on the trained bundle, the model zoo's TorchScript command with its defaults too:

```bash
{_shell_lines(TORCHSCRIPT_COMMAND)}
python -m monai.bundle onnx_export network_def --filepath models/model.onnx --ckpt_file models/model.pt \\
    --meta_file configs/metadata.json --config_file configs/inference.json
```

{_torchscript_note(spec)}

{ONNX_EXPORT_NOTE}

`monai.bundle.load("{spec.name}", bundle_dir=..., workflow_type="infer")` returns the network with the weights
(`configs/infer.json` is `inference.json` under the name `load` looks for; `workflow_type="train"` reads
`train.json`).

## Limitations

- 2-D model: volumes are segmented slice by slice with no 3-D context.
- Trained on one public dataset; expect lower accuracy on other scanners, protocols and populations.
- Research use only; not a medical device.

## Citation

{chr(10).join("- " + c for c in citations(spec))}
"""


def data_license(spec: BundleSpec) -> str:
    """docs/data_license.txt."""
    card = spec.dataset_card
    return f"Third-party data: {card.title}\nSource: {card.source}\n\n{card.license}\n\nCite: {card.citation}\n"


LICENSE_TEXT = """Copyright (c) gdla-bundles contributors

The code and configuration files of this bundle are licensed under the Apache License, Version 2.0
(SPDX-License-Identifier: Apache-2.0); you may not use them except in compliance with the License.
You may obtain a copy of the License at https://www.apache.org/licenses/LICENSE-2.0

Model weights trained on third-party data are subject to that data's licence as well: see docs/data_license.txt.
"""


def large_files(url: str = "", hash_val: str = "") -> str:
    """large_files.yml: the weights are not in git, so the repository's copy lists nothing to download (an entry
    without an address would make ``monai.bundle download_large_files`` fail); a release archive's copy, written by
    ``release pack``, lists ``models/model.pt`` with its SHA-256 and, given ``--url-base``, its address."""
    if not hash_val:
        return (
            "# Weights are not kept in git: nothing to download here. A release archive made by\n"
            "# `python -m common release pack` lists models/model.pt with its address and SHA-256.\n"
            "large_files: []\n"
        )
    return (
        "# Written by `python -m common release pack`: `python -m monai.bundle download_large_files` fetches and checks\n"
        "# models/model.pt (the archive already holds it; the file is kept when its SHA-256 matches).\n"
        "large_files:\n"
        '  - path: "models/model.pt"\n'
        f"    url: {json.dumps(url)}\n"
        f"    hash_val: {json.dumps(hash_val)}\n"
        '    hash_type: "sha256"\n'
    )
