import pytest
import yaml

from distft.config import TrainConfig
from distft.errors import DistftError

REQUIRED = dict(model="m.h5", data="d/*.tfrecord", output_dir="out")


def test_flags_override_yaml_and_types_are_coerced(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({**REQUIRED, "epochs": 7, "lr": "0.01", "scale_lr": "false",
                                        "unfreeze": "last:2"}))
    cfg = TrainConfig.resolve(str(cfg_file), epochs="3", input_shape="96,96,3", metrics="accuracy,mae")
    assert cfg.epochs == 3  # the flag wins
    assert cfg.lr == 0.01 and cfg.scale_lr is False and cfg.unfreeze == "last:2"
    assert cfg.input_shape == (96, 96, 3)
    assert cfg.metrics == ("accuracy", "mae")


def test_callbacks_from_yaml_are_a_list(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({**REQUIRED, "val_split": 0.1, "callbacks": [
        "keras.callbacks.EarlyStopping(monitor='val_loss', patience=2)", "ReduceLROnPlateau(factor=0.5)"]}))
    cfg = TrainConfig.resolve(str(cfg_file))
    assert cfg.callbacks == ("keras.callbacks.EarlyStopping(monitor='val_loss', patience=2); "
                             "ReduceLROnPlateau(factor=0.5)")
    cfg.save(str(tmp_path / "config.yaml"))
    assert TrainConfig.resolve(str(tmp_path / "config.yaml")) == cfg


def test_saved_config_round_trips(tmp_path):
    cfg = TrainConfig.resolve(**REQUIRED, epochs=5, input_shape=(8, 8, 1))
    cfg.save(str(tmp_path / "config.yaml"))
    again = TrainConfig.resolve(str(tmp_path / "config.yaml"))
    assert again == cfg


@pytest.mark.parametrize("bad, message", [
    ({"epoch": 3}, "unknown option --epoch: did you mean --epochs"),
    ({"epochs": 0}, "--epochs must be positive"),
    ({"batch_size": -1}, "--batch_size must be positive"),
    ({"lr": 0}, "--lr must be positive"),
    ({"epochs": "three"}, "is not an integer"),
    ({"scale_lr": "maybe"}, "is not true or false"),
    ({"optimizer": "lbfgs"}, "is not one of adam|adamw|sgd|rmsprop"),
    ({"val_split": 1.5}, "--val_split must be in [0, 1)"),
    ({"resume": True, "overwrite": True}, "exclude each other"),
    ({"num_classes": 1}, "--num_classes must be at least 2"),
    ({"profile": "15:5"}, "--profile=15:5 is not START:END with 1 <= START <= END: pass steps, e.g."),
    ({"profile": "5"}, "--profile=5 is not START:END"),
    ({"profile_ranks": "1"}, "--profile_ranks needs --profile=START:END"),
    ({"profile": "5:15", "profile_ranks": "0,x"}, "--profile_ranks=0,x is not a list of ranks"),
    ({"histograms": -1}, "--histograms must be >= 0"),
    ({"generations": -1}, "--generations must be >= 0"),
    ({"slow_rank": 0}, "--slow_rank must be > 0"),
    ({"steps_per_execution": 0}, "--steps_per_execution must be positive, got 0: pass e.g. "
                                 "--steps_per_execution=1"),
    ({"steps_per_execution": "2.5"}, "--steps_per_execution='2.5' is not an integer"),
    ({"callbacks": "__import__('os')"}, "--callbacks: __import__ in __import__('os') is not a class name"),
    ({"callbacks": "EarlyStopping(monitor=__import__('os').getcwd())"},
     "--callbacks: __import__('os').getcwd() in EarlyStopping(monitor=__import__('os').getcwd()) is "
     "not a literal, and nothing is evaluated: write CLASS(KEY=VALUE, ...)"),
    ({"callbacks": "EarlyStopping(patience=2"}, "--callbacks=EarlyStopping(patience=2: not a call ("),
    ({"callbacks": "import os"}, "--callbacks: import os is not a call of a callback class"),
    ({"callbacks": "EarlyStopping(**{'patience': 2})"}, "**arguments are not literals"),
    ({"early_stopping": "loss:patiense=3"}, "--early_stopping=loss:patiense=3: patiense is not one of its "
                                            "arguments (patience, min_delta, mode, baseline, start_from_epoch)"),
    ({"early_stopping": "val_loss"}, "--early_stopping=val_loss: val_loss is a validation metric and the "
                                     "run has no validation data: pass --val_data or --val_split"),
    ({"callbacks": "EarlyStopping(monitor='val_auc')"}, "val_auc is a validation metric"),
    ({"keep_best": "loss:mode=up"}, "--keep_best=loss:mode=up: mode is one of auto|min|max"),
])
def test_bad_values_are_one_clear_error(bad, message):
    with pytest.raises(DistftError) as e:
        TrainConfig.resolve(**{**REQUIRED, **bad})
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_required_option():
    with pytest.raises(DistftError, match="--data is required"):
        TrainConfig.resolve(model="m.h5", output_dir="x")
    assert TrainConfig.resolve(model="m.h5", data="x").output_dir == ""  # chosen at the start


def test_yaml_that_does_not_parse_or_names_unknown_option(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [3\n")
    with pytest.raises(DistftError, match="not valid YAML"):
        TrainConfig.resolve(str(broken))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rate: 0.1\n")
    with pytest.raises(DistftError, match="unknown option --learning_rate"):
        TrainConfig.resolve(str(unknown), **REQUIRED)


def test_data_pipeline_options_are_checked():
    cfg = TrainConfig.resolve(**REQUIRED, preprocess="mobilenet_v2", augment="flip,color", cache="memory")
    assert (cfg.preprocess, cfg.augment, cfg.cache) == ("mobilenet_v2", ("flip", "color"), "memory")
    with pytest.raises(DistftError, match="--preprocess=mobilenet9 is not one of auto"):
        TrainConfig.resolve(**REQUIRED, preprocess="mobilenet9")
    with pytest.raises(DistftError, match="--augment=flip,blur: blur unknown; use any of "
                                          "flip,crop,rotate,color"):
        TrainConfig.resolve(**REQUIRED, augment="flip,blur")


def test_api_train_stays_the_function_after_the_trainer_loads():
    import distft
    import distft.train.trainer  # noqa: F401  (what a first distft.train() call imports)

    assert callable(distft.train) and distft.train is distft.api.train


def test_tensorboard_defaults_rank_health_on_the_rest_off():
    cfg = TrainConfig.resolve(**REQUIRED, profile="5:15", profile_ranks="0,1")
    assert cfg.profile_steps() == (5, 15) and cfg.profile_ranks == ("0", "1")
    cfg = TrainConfig.resolve(**REQUIRED)
    assert cfg.rank_health and not cfg.histograms and cfg.profile is None
