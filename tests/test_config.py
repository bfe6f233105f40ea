import pytest
import yaml

from cyclegan_dist.config import Config, diff_configs, load_config, write_config
from cyclegan_dist.errors import UserError


def test_base_holds_reference_defaults():
    c = load_config("base")
    assert (c.train.lr, c.train.beta1, c.train.beta2) == (2e-4, 0.5, 0.999)
    assert c.loss.gan_mode == "lsgan" and c.loss.lambda_cycle == 10.0
    assert c.loss.lambda_identity == 5.0  # effective weight 0.5 x 10, written explicitly
    assert c.loss.pool_size == 50 and c.loss.d_loss_weight == 0.5
    assert c.model.norm == "instance" and not c.model.use_dropout and c.model.init_gain == 0.02
    assert (c.data.load_size, c.data.crop_size, c.data.flip) == (286, 256, True)


def test_resnet9_and_unet_differ_only_in_the_generator():
    a, b = load_config("resnet9").to_dict(), load_config("unet").to_dict()
    assert diff_configs(a, b) == ["experiment: 'resnet9' -> 'unet'", "model.generator: 'resnet_9blocks' -> 'unet_256'"]


def test_small_arms_differ_only_in_the_generator():
    a, b = load_config("resnet9-small").to_dict(), load_config("unet-small").to_dict()
    assert diff_configs(a, b) == ["experiment: 'resnet9-small' -> 'unet-small'",
                                  "model.generator: 'resnet_9blocks' -> 'unet_32'"]


def test_overrides_are_typed():
    c = load_config("smoke", ["train.steps=7", "data.root=/data/x", "wandb.tags=[a, b]", "train.lr=1e-3"])
    assert c.train.steps == 7 and c.data.root == "/data/x" and c.wandb.tags == ("a", "b") and c.train.lr == 1e-3


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.stepz=1", "unknown key 'train.stepz' in train; valid keys: steps,"),
        ("bogus.x=1", "unknown key 'bogus' in the top level; valid keys: experiment, seed, model"),
        ("train.steps=abc", "train.steps must be an integer, got 'abc'"),
        ("model.generator=resnet_12", "model.generator='resnet_12' is not valid; choose one of: resnet_9blocks"),
        ("data.crop_size=30", "data.crop_size (30) must be a multiple of 4"),
        ("train.mixed_precision=fp8", "choose one of: no, bf16, fp16"),
        ("train.channels_last=maybe", "train.channels_last must be true or false"),
        ("train.steps", "must look like section.key=value"),
        ("train.steps=0", "train.steps must be > 0"),
        ("train.beta1=5", "train.beta1 and train.beta2 must be within [0, 1), got 5.0"),
        ("train.beta2=-0.1", "train.beta1 and train.beta2 must be within [0, 1)"),
        ("train.lr=.inf", "train.lr must be a finite number, got inf"),
        ("loss.d_loss_weight=.nan", "loss.d_loss_weight must be a finite number, got nan"),
        ("loss.d_loss_weight=0", "loss.d_loss_weight must be > 0"),
        ("model.n_layers_d=-3", "model.n_layers_d must be >= 1, got -3"),
        ("model.init_gain=0", "model.init_gain must be > 0"),
        ("eval.num_photos=1", "eval.num_photos must be >= 2"),
        ("train.fp16_init_scale=0.5", "train.fp16_init_scale must be >= 1"),
        ("train.nonfinite_skip=gpu", "choose one of: auto, host, device"),
    ],
)
def test_bad_values_name_the_key_and_the_choices(override, expected):
    with pytest.raises(UserError) as info:
        load_config("smoke", [override])
    assert expected in str(info.value)


def test_submit_rejects_a_bad_value_before_queueing_anything(tmp_path):
    """The same check in ``launcher submit --dry-run`` as in ``train``: one line, exit 2, nothing written."""
    from helpers import run_cli

    out = run_cli("submit", "--exp", "smoke", "--set", "train.beta1=5", "--run-root", tmp_path / "runs", "--dry-run",
                  module="launcher", check=False)
    assert out.returncode == 2 and "train.beta1 and train.beta2 must be within [0, 1)" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()


def test_yaml_booleans_are_read_as_choice_words():
    assert load_config("smoke", ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_unet_needs_a_crop_it_can_halve():
    with pytest.raises(UserError, match="multiple of 256"):
        load_config("unet", ["data.crop_size=128", "data.load_size=143"])


def test_missing_file_lists_experiments(tmp_path):
    with pytest.raises(UserError, match="smoke"):
        load_config(tmp_path / "nope.yaml")


def test_extends_and_round_trip(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml\ntrain:\n  steps: 9\n")
    (tmp_path / "parent.yaml").write_text("experiment: p\ntrain:\n  steps: 5\n  batch_size: 2\n")
    c = load_config(child)
    assert (c.experiment, c.train.steps, c.train.batch_size) == ("p", 9, 2)
    write_config(c, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == c
    assert isinstance(yaml.safe_load((tmp_path / "resolved.yaml").read_text()), dict)


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().seed = 3  # type: ignore[misc]


def test_base_yaml_states_exactly_the_dataclass_defaults():
    """configs/base.yaml shows users every key with the reference default; config.py's dataclasses hold the same
    values (what a config without ``extends`` gets): one fact, checked here so the two cannot drift apart."""
    import yaml

    from cyclegan_dist.config import Config, find_config_file

    base = yaml.safe_load(find_config_file("base").read_text())
    base.pop("extends", None)

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", list(value) if isinstance(value, (list, tuple)) else value

    in_yaml, in_code = dict(leaves(base)), dict(leaves(Config().to_dict()))
    in_yaml.pop("experiment"), in_code.pop("experiment")  # each file names its own experiment
    assert in_yaml.keys() == in_code.keys(), sorted(in_yaml.keys() ^ in_code.keys())
    assert {k: v for k, v in in_yaml.items() if in_code[k] != v} == {}
