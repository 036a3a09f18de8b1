"""Typed config: partial overrides keep the field's own defaults; errors name the key."""
import pytest

from pgopd.config import ConfigError, ToyModelsConfig, describe, parse, parse_dataclass, to_dict


def test_partial_override_keeps_the_fields_own_default():
    # the toy student's defaults differ from ToyModelConfig's; overriding one key keeps the rest
    default = parse({}).toy_models.student
    got = parse_dataclass(ToyModelsConfig, {"student": {"train_steps": 10}}, "toy_models").student
    assert got.train_steps == 10
    assert (got.n_layers, got.d_model, got.n_heads, got.lr) == (default.n_layers, default.d_model,
                                                                default.n_heads, default.lr)
    assert (default.n_layers, default.d_model) != (4, 128)
    res = parse({"resources": {"build_toy_models": {"mem_mb": 999}}}).resources.build_toy_models
    assert res.mem_mb == 999 and res.cpus_per_task == parse({}).resources.build_toy_models.cpus_per_task == 2


def test_error_names_the_nested_key():
    with pytest.raises(ConfigError, match=r"^toy_models\.student\.d_model: expected an integer"):
        parse({"toy_models": {"student": {"d_model": "big"}}})


def test_cross_check_message_survives_an_int_too_large_to_print():
    # 10**5000 passes d_model's range check; the divisibility message must still be a
    # ConfigError naming the key (found by test_fuzz: Python refuses to print such an int)
    with pytest.raises(ConfigError, match=r"^toy_models\.student\.n_heads: d_model \(<int too large"):
        parse({"toy_models": {"student": {"d_model": 10 ** 5000, "n_heads": 3}}})


def test_help_shows_each_blocks_own_defaults():
    # toy_models.student overrides its class's defaults; `pgopd build-toy-models --help` must
    # show the student's values (it showed the teacher-sized class defaults before)
    lines = {ln.split(" (default ")[0].strip(): ln for ln in describe(ToyModelsConfig, "toy_models")}
    student = to_dict(ToyModelsConfig().student)
    for name in ("n_layers", "d_model", "train_steps", "final_lr_fraction", "seed"):
        assert f"(default {student[name]})" in lines[f"toy_models.student.{name}"]
    assert "(default 4)" in lines["toy_models.teacher.n_layers"] and student["n_layers"] == 2
