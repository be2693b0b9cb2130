"""Tiny but real nnU-Net v2 trained-model folders for TotalSegmentator, so its whole call path
(cropping, resampling, nnU-Net preprocessing, sliding-window prediction, export, undoing the
crop and the resampling) runs here on the CPU in seconds without the real weights.

Each fake model is the architecture its plans describe -- nnU-Net's ``PlainConvUNet`` (two
stages, a few channels, no normalisation so the weights set below mean what they say) -- with
hand-set weights instead of random ones, so the output is known: every voxel brighter than
:data:`BONE_HU` gets one chosen class of TotalSegmentator's ``total`` map, all others are
background.  The network sees nnU-Net's CT normalisation of the image, ``HU / 1000`` with the
intensity properties written into the plans:

* encoder stage 0, channel 0: ``relu(x - BONE_HU / 1000)`` (centre tap 1, bias -threshold);
* decoder stage 0: passes that skip channel through (the upsampled path is all zero);
* segmentation layer: the chosen class gets ``GAIN x`` that, background a bias of 1.

So "bone" is ``x > BONE_HU / 1000 + 1 / GAIN``, and the labels must land on the CT's bright
voxels: a misplaced, flipped or shifted label map fails the tests that use it.
"""

from __future__ import annotations

import json
from pathlib import Path

PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
BONE_HU = 200.0
GAIN = 20.0
FEATURES = (4, 8)

#: task id -> (folder, trainer, spacing mm) of the models the backend needs (see
#: ``spine_idc.segment.networks.totalseg.required_models``).
TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"
MODELS = {
    297: ("Dataset297_TotalSegmentator_total_3mm_1559subj", TRAINER, 3.0),
    298: ("Dataset298_TotalSegmentator_total_6mm_1559subj", TRAINER, 6.0),
}


def _plans(folder: str, spacing: float) -> dict:
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": len(FEATURES),
            "features_per_stage": list(FEATURES),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * len(FEATURES),
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (len(FEATURES) - 1),
            "n_conv_per_stage": [1] * len(FEATURES),
            "n_conv_per_stage_decoder": [1] * (len(FEATURES) - 1),
            "conv_bias": True,
            "norm_op": None,
            "norm_op_kwargs": None,
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.ReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resample = "resample_data_or_seg_to_shape"
    no_z = {"order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": folder,
        "plans_name": PLANS,
        "original_median_spacing_after_transp": [spacing] * 3,
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIGURATION: {
                "data_identifier": f"{PLANS}_{CONFIGURATION}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [32, 32, 32],
                "median_image_size_in_voxels": [64, 64, 64],
                "spacing": [spacing] * 3,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": resample,
                "resampling_fn_seg": resample,
                "resampling_fn_probabilities": resample,
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **no_z},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **no_z},
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **no_z},
                "architecture": arch,
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        # CTNormalization: clip to the percentiles, subtract the mean, divide by the std.
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3000.0, "mean": 0.0, "median": 0.0, "min": -1024.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 2000.0, "std": 1000.0}
        },
    }


def _network(plans: dict, n_classes: int, class_value: int):
    """The plans' network with the weights that label bright voxels ``class_value``."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = plans["configurations"][CONFIGURATION]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                 arch["_kw_requires_import"], 1, n_classes,
                                 allow_init=True, deep_supervision=False)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        first = net.encoder.stages[0][0].convs[0].conv
        first.weight[0, 0, 1, 1, 1] = 1.0
        first.bias[0] = -BONE_HU / 1000.0
        # decoder input = cat(upsampled, skip): the skip's channel 0 is at FEATURES[0]
        dec = net.decoder.stages[0].convs[0].conv
        dec.weight[0, FEATURES[0], 1, 1, 1] = 1.0
        seg = net.decoder.seg_layers[-1]
        seg.weight[class_value, 0] = GAIN
        seg.bias[0] = 1.0
    return net


def make_model(results: Path, task_id: int, class_name: str) -> Path:
    """Write the fake model ``task_id`` under ``results`` (TotalSegmentator's ``nnunet/results``)
    labelling bright voxels with the ``total`` class ``class_name``; returns its folder."""
    import torch
    from totalsegmentator.map_to_binary import class_map

    folder, trainer, spacing = MODELS[task_id]
    labels = {"background": 0, **{name: int(v) for v, name in sorted(class_map["total"].items())}}
    plans = _plans(folder, spacing)
    model_dir = Path(results) / folder / f"{trainer}__{PLANS}__{CONFIGURATION}"
    (model_dir / "fold_0").mkdir(parents=True, exist_ok=True)
    (model_dir / "plans.json").write_text(json.dumps(plans, indent=1))
    (model_dir / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz",
    }, indent=1))
    net = _network(plans, len(labels), labels[class_name])
    torch.save({
        "network_weights": net.state_dict(),
        "trainer_name": trainer,
        "init_args": {"configuration": CONFIGURATION},
        "inference_allowed_mirroring_axes": None,
    }, model_dir / "fold_0" / "checkpoint_final.pth")
    return model_dir


def make_home(home: Path, *, crop_class: str = "vertebrae_L3", class_name: str = "vertebrae_L1",
              usage_stats: bool = False) -> Path:
    """A TotalSegmentator home with the two fake models ``fast`` mode needs: the crop model
    (298) labels bone ``crop_class``, the 3 mm model (297) ``class_name``.  Its ``config.json``
    has ``send_usage_stats`` = ``usage_stats`` (TotalSegmentator's own default is true)."""
    home = Path(home)
    results = home / "nnunet" / "results"
    make_model(results, 298, crop_class)
    make_model(results, 297, class_name)
    (home / "config.json").write_text(json.dumps(
        {"totalseg_id": "totalseg_TESTTEST", "send_usage_stats": usage_stats,
         "prediction_counter": 0, "statistics_disclaimer_shown": True}))
    return home
