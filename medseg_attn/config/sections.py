"""The configuration's sections: frozen dataclasses with a default for every key (an empty file is valid)."""

from __future__ import annotations

from dataclasses import dataclass, field

from medseg_attn.errors import UserError

__all__ = [
    "AugmentationConfig",
    "ClassifyDataConfig",
    "ClassifyModelConfig",
    "ClassifyTrainConfig",
    "ConfigError",
    "DataConfig",
    "InferenceConfig",
    "ModelConfig",
    "TrainConfig",
]


class ConfigError(UserError):
    """A configuration key or value is wrong; the message says which and what was expected."""


@dataclass(frozen=True)
class AugmentationConfig:
    """Random augmentation applied to training patches (MONAI dictionary transforms)."""

    enabled: bool = True
    rotate_degrees: float = 15.0  # RandAffined rotation range per axis
    scale: float = 0.1  # RandAffined scale range (+-)
    affine_probability: float = 0.2
    flip_axes: tuple[int, ...] = ()  # spatial axes (RAS order) to flip at random; empty for lateralised labels
    intensity_probability: float = 0.15  # for each of noise, blur, brightness, shift, contrast, gamma
    noise_std: float = 0.1  # RandGaussianNoised: sigma drawn in [0, noise_std] (z-scored units)
    brightness: float = 0.25  # RandScaleIntensityd: intensities x (1 +- brightness)
    contrast: float = 0.25  # RandScaleIntensityFixedMeand: spread about the mean x (1 +- contrast), range kept
    gamma: tuple[float, float] = (0.7, 1.5)  # RandAdjustContrastd gamma range (statistics retained)
    inverted_gamma_probability: float = 0.1  # gamma applied to the inverted image (nnU-Net)
    bias_field_probability: float | str = "auto"  # smooth multiplicative field on the signal (MR coil
    # inhomogeneity); auto = 0.5 for MR segmentation, 0.3 for CT and classification
    bias_field_coefficient: float | str = "auto"  # its Legendre coefficients (degree 3) in [0, this]; auto = 0.12
    # for MR segmentation (max/min across a 64^3 patch about 4.7, median), 0.06 for CT and classification (2.2)
    low_resolution_probability: float = 0.15  # RandSimulateLowResolutiond: down- then up-sampled
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)  # its zoom range (0.5 = half the resolution)
    background_mask_probability: float = 0.15  # segmentation, non-CT: outside a 1-4 voxel dilated label -> background
    channel_dropout_probability: float = 0.2  # segmentation with several channels (T1, FLAIR, ...): each dropped
    # (filled as a missing sequence is at prediction) with this probability, one always kept; 0 = off

    def bias_field(self, mr: bool) -> tuple[float, float]:
        """(probability, coefficient) of the bias-field augmentation, 'auto' resolved: stronger for MR segmentation
        (halves the Dice lost under a +-45 % field, docs/trust.md), as before for CT and classification."""
        auto = (0.5, 0.12) if mr else (0.3, 0.06)
        probability, coefficient = self.bias_field_probability, self.bias_field_coefficient
        return (auto[0] if probability == "auto" else float(probability),
                auto[1] if coefficient == "auto" else float(coefficient))


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is turned into network inputs."""

    dataset: str | None = None  # dataset.json, a folder holding one, or an nnU-Net raw folder (imagesTr/labelsTr)
    modality: str = "auto"  # auto (from the dataset), ct, mr
    labels: dict[int, str] | None = None  # class index -> name; null = read from the dataset
    spacing: tuple[float, ...] | str | None = "auto"  # target mm per voxel; auto = median of training cases
    orientation: str = "RAS"
    intensity: str = "auto"  # auto (planned: ct -> ct, else zscore), ct (dataset percentiles 0.5-99.5 + z-score),
    # ct_window (fixed ct_window scaled to [0, 1]), zscore (per case, inside the body mask), none
    ct_window: tuple[float, float] = (-1000.0, 1000.0)  # HU clipped and scaled to [0, 1] by the ct_window preset
    crop_foreground: bool = True  # crop each volume to its body mask's bounding box before patches
    normalisation_mask: bool | str = "auto"  # auto (planned), true, false: normalise inside the body mask and set
    # the background outside it to one value
    patch_size: tuple[int, ...] | str = "auto"  # voxels on the network grid; auto = planned within voxel_budget
    voxel_budget: int | None = None  # batch x patch voxels the plan may use; null = 2 x 64^3 on CPU, 2 x 128^3 CUDA
    samples_per_case: int = 2  # patches drawn from a case each time it is visited
    foreground_fraction: float = 0.67  # fraction of patches centred on a labelled voxel
    lesion_sampling: str = "auto"  # within a class, centre patches lesion by lesion (each connected component
    # equally often) or voxel by voxel; auto = by lesion for dataset.json's lesion_structures, lesion = every class
    validation_fraction: float = 0.2  # held out from training when folds == 0
    folds: int = 0  # k-fold cross-validation when > 1 ...
    fold: int = 0  # ... and this fold is the validation set
    max_validation_cases: int = 8  # cap on validation cases (sliding-window validation is costly on CPU)
    cache: str = "disk"  # disk: preprocess once into cache_dir, patches read by memory map (bounded RAM); memory:
    # every preprocessed case in RAM (MONAI CacheDataset; true means memory); none: re-read every visit (false)
    cache_dir: str | None = None  # the disk cache; null = $MEDSEG_ATTN_CACHE or ~/.cache/medseg-attn (shareable)
    preprocess_workers: int = 0  # worker processes that fingerprint and preprocess; 0 = every core
    num_workers: int = 0  # DataLoader workers for augmentation
    prefetch: str = "auto"  # num_workers 0: prepare the next batch in a thread while the network trains; auto = on
    # with CUDA (the CPU is idle while the GPU computes), off on CPU (the thread competes with the training step)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The network. ``architecture`` can also name MONAI networks for side-by-side comparisons."""

    architecture: str = "attention_skip_unet"  # or monai_unet, monai_attention_unet
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    first_stride: int = 2  # stride of the first encoder level: 2 works at half resolution, 1 at full
    attention: bool = True  # False = the matched U-Net baseline
    head_dim: int = 16
    window_size: int = 4
    global_levels: int = 1
    global_max_tokens: int = 4096
    attention_dropout: float = 0.0
    position: bool = True  # learned within-window position embeddings in the windowed attention blocks
    attention_pool: tuple[int, ...] = (4, 2)  # token side per skip level, finest first: 2 = 2x2x2-voxel tokens
    norm: str = "instance"
    residual: bool = True  # residual convolution blocks (ResNet-style) or plain conv-norm-act pairs
    deep_supervision: bool = False
    decoder_layers: int = 1  # convolutions per decoder level: 1 (conv-norm-act) or 2 (a residual block, as before
    # 2026-12-07: 20 % more steps per CPU-minute for the same or better Dice, docs/benchmarks.md "Ordinary CPUs")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, budget, validation and logging."""

    max_epochs: int = 1000
    minutes: float | None = None  # wall-clock budget for training, validation included
    steps_per_epoch: int = 50  # optimizer steps per epoch; null = one pass over the training cases
    batch_size: int | str = "auto"  # patches per step; auto = planned from the dataset (segmentation)
    optimizer: str = "adamw"  # adamw or sgd
    lr: float = 2e-3
    weight_decay: float = 1e-5
    momentum: float = 0.99  # sgd only (nesterov)
    schedule: str = "cosine"  # cosine, poly or constant; decays over max_epochs or the time budget
    warmup_steps: int = 20
    val_interval: int = 5  # epochs between sliding-window validations
    patience: int | None = None  # stop after this many validations without a better Dice
    seed: int = 0
    amp: str = "auto"  # auto (on for CUDA), on, off
    compile: bool = False  # torch.compile the training forward (slow first steps; needs a C++ compiler on CPU)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    log_images: bool = True  # TensorBoard overlays of a validation case
    init_from: str | None = None  # fine-tune: start from this run folder's / checkpoint's weights (segmentation)


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window prediction."""

    overlap: float = 0.5
    sw_batch_size: int = 4  # windows per forward pass (why 4: docs/benchmarks.md, "Timings behind design choices")
    blend: str = "gaussian"  # gaussian or constant
    tta: bool = False  # average over flips of every spatial axis
    patch_size: tuple[int, ...] | None = None  # null = data.patch_size
    # auto (fp16 on CUDA, bf16 on CPUs measured >= 1.3x faster in bf16, else fp32), fp32, bf16, fp16
    precision: str = "auto"


@dataclass(frozen=True)
class ClassifyDataConfig:
    """Image classification data: ImageFolder roots (``root/<class>/<image>``) or CSV listings (``path,label``)."""

    train: str | None = None  # ImageFolder root, a folder holding train/ [val/] [test/], or a CSV listing
    val: str | None = None  # validation set (same forms); null = root/val when present, else a stratified split
    test: str | None = None  # test set for `classify evaluate` (null = root/test when present)
    image_size: tuple[int, ...] | None = None  # resize to (H, W) or (X, Y, Z); null = all images must match
    color: str = "auto"  # auto (rgb when any image is colour), grayscale, rgb
    intensity: str = "zscore"  # zscore (per image), scale (/255 or /65535 by bit depth), minmax, ct, none
    ct_window: tuple[float, float] = (-1000.0, 1000.0)  # HU window of the ct preset
    validation_fraction: float = 0.2  # stratified share held out when there is no validation set
    cache: bool = True  # keep decoded, resized images in memory
    num_workers: int = 0
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass(frozen=True)
class ClassifyModelConfig(ModelConfig):
    """The classifier: the :class:`ModelConfig` encoder keys plus the classification head."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    first_stride: int = 1
    decoder_layers: int = 2  # the multitask decoder's convolutions per level
    attention: bool = True  # attention head (and attention skips when multitask); False = pooling + MLP baseline
    pooling: str = "class_token"  # class_token (transformer block over [cls; tokens]) or attention (learned query)
    head_layers: int = 1  # transformer blocks of the class_token head
    hidden: int | None = None  # MLP hidden width; null = 2 x bottleneck channels
    dropout: float = 0.1  # before the last linear layer
    multitask: bool = False  # also segment with the U-Net decoder (needs label maps beside the images)
    segmentation_weight: float = 1.0  # weight of the DiceCE segmentation loss in multitask training


@dataclass(frozen=True)
class ClassifyTrainConfig(TrainConfig):
    """:class:`TrainConfig` with classification defaults and class-imbalance handling."""

    steps_per_epoch: int | None = None  # null = one pass over the training images
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    val_interval: int = 1
    balance: str = "none"  # none, sampler (class-balanced sampling) or loss (inverse-frequency class weights)
    label_smoothing: float = 0.0
    monitor: str = "balanced_accuracy"  # validation value that selects best.pt: balanced_accuracy, accuracy,
    # macro_f1, auc or loss
