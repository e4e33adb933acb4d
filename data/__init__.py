"""The data layer: TFDS datasets -> NumPy arrays -> tf.data pipelines.

- `datasets`: what each `--dataset` means (TFDS name and version, labels, download source).
- `availability`: is the data there or obtainable? Without TensorFlow, for the command lines.
- `loading`: TFDS -> NumPy, the train/validation split, normalization statistics.
- `pipeline`: NumPy -> tf.data (shuffling, augmentation, batching, resumable streams).
- `cifar_n`, `tiny_imagenet`: what TFDS needs to prepare CIFAR-N and Tiny-ImageNet.

Nothing here imports `app/`; tf.data and TFDS live in this package only.
"""
