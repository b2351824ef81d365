"""The one parse of request parameters: rules, the wire format, the validator."""

from __future__ import annotations

import pickle

import pytest
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError

from dynin_vllm.diffusion.params import (
    BUILTIN_DEFAULTS,
    RESOLVED_KEY,
    DiffusionParamError,
    DiffusionParams,
    parse_params,
)
from dynin_vllm.engine import infill
from dynin_vllm.engine.validation import (
    ResolvedParamsError,
    is_validator_name,
    resolved_params,
    validator_name,
)

VOCAB = 126464


def _validator(defaults):
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns

    name = validator_name(defaults, vocab_size=VOCAB)
    assert is_validator_name(name)
    (cls,) = _load_logitsprocs_by_fqcns([name])  # how vLLM's front end loads it
    return cls


def test_a_requested_rule_replaces_the_default_rule():
    defaults = {"threshold": 0.9, "block_length": 8}
    chose_factor = parse_params({"factor": 1.5}, defaults)
    assert (chose_factor.threshold, chose_factor.factor) == (None, 1.5)
    assert chose_factor.block_length == 8
    chose_threshold = parse_params({"threshold": 0.5}, {"factor": 2.0})
    assert (chose_threshold.threshold, chose_threshold.factor) == (0.5, None)
    assert parse_params(None, defaults).threshold == 0.9


def test_wire_format_round_trips_and_is_strict():
    params = parse_params(
        {"canvas": [1, 2], "uncond_prompt_token_ids": [3], "cfg_scale": 1.0}, seed=4
    )
    wire = params.to_wire()
    assert DiffusionParams.from_wire(pickle.loads(pickle.dumps(wire))) == params
    with pytest.raises(ValueError, match="exactly the keys"):
        DiffusionParams.from_wire({k: v for k, v in wire.items() if k != "mode"})
    with pytest.raises(ValueError, match="exactly the keys"):
        DiffusionParams.from_wire({**wire, "extra": 1})


def test_validator_resolves_with_its_engine_defaults_without_touching_the_caller():
    cls = _validator({"block_length": 8, "mode": "exact"})
    user_extra = {"steps": 4}
    sp = SamplingParams(max_tokens=16, seed=7, extra_args=user_extra)
    cls.validate_params(sp)
    assert user_extra == {"steps": 4}  # the caller's dict is not modified
    resolved = resolved_params(sp)
    assert resolved == parse_params(
        {"steps": 4}, {"block_length": 8, "mode": "exact"}, seed=7
    )
    assert (resolved.block_length, resolved.mode, resolved.steps) == (8, "exact", 4)
    # Validating the same params object again (a batch sharing one) is stable.
    cls.validate_params(sp)
    assert resolved_params(sp) == resolved


def test_two_engines_in_one_process_keep_their_own_defaults():
    a = _validator({"block_length": 8})
    b = _validator({"block_length": 16})
    sp_a, sp_b = SamplingParams(max_tokens=4), SamplingParams(max_tokens=4)
    a.validate_params(sp_a)
    b.validate_params(sp_b)
    assert resolved_params(sp_a).block_length == 8
    assert resolved_params(sp_b).block_length == 16
    assert pickle.loads(pickle.dumps(a)) is a  # travels to other processes by name


def test_validator_rejects_naming_the_field():
    cls = _validator({"threshold": 0.9})
    with pytest.raises(VLLMValidationError) as err:
        cls.validate_params(
            SamplingParams(max_tokens=4, extra_args={"threshold": 0.5, "factor": 1.0})
        )
    assert err.value.parameter == "factor"
    with pytest.raises(VLLMValidationError) as err:
        cls.validate_params(SamplingParams(max_tokens=4, extra_args={"blocklen": 2}))
    assert err.value.parameter == "blocklen"


def test_the_engine_never_parses_a_request_it_was_not_given_resolved():
    with pytest.raises(ResolvedParamsError, match="bypass"):
        resolved_params(SamplingParams(max_tokens=4, extra_args={"steps": 4}))
    bad = SamplingParams(max_tokens=4, extra_args={RESOLVED_KEY: {"steps": 4}})
    with pytest.raises(ResolvedParamsError, match="malformed"):
        resolved_params(bad)


def test_builtin_defaults_are_complete():
    assert set(BUILTIN_DEFAULTS) <= {f for f in DiffusionParams.__dataclass_fields__}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("False", False),
    ],
)
def test_infill_accepts_json_and_vllm_xargs_booleans(value, expected):
    # vllm_xargs turns JSON true/false into 1/0.
    assert parse_params({"infill": value}).infill is expected


@pytest.mark.parametrize("value", [2, "yes", None, 0.5])
def test_infill_rejects_other_values_naming_it(value):
    with pytest.raises(DiffusionParamError) as err:
        parse_params({"infill": value})
    assert err.value.parameter == "infill"


def test_infill_is_on_by_default_and_never_in_block_mode():
    assert parse_params({}).fills_prompt
    assert not parse_params({"mode": "block"}).fills_prompt
    assert not parse_params({"infill": False}).fills_prompt


class _Tokenizer:
    """Decodes one id to the text a byte-level tokenizer would give it."""

    def decode(self, ids, skip_special_tokens=True):
        (token,) = ids
        return {126336: "<|mdm_mask|>", 7: " Paris", 8: " big"}[token]


class _State:
    def __init__(self, prompt, prompt_token_ids):
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.detokenizer = type("D", (), {"tokenizer": _Tokenizer()})()


def test_the_front_end_rewrites_the_prompt_with_its_fills():
    state = _State("A<|mdm_mask|> is<|mdm_mask|>.", [1, 126336, 2, 126336, 3])
    params = infill.attach({"other": 1}, [1, 3], [7, 126336])
    assert infill.apply_filled_prompt(state, params) == {"other": 1}
    assert state.prompt_token_ids == [1, 7, 2, 126336, 3]
    assert state.prompt == "A Paris is<|mdm_mask|>."  # an unfilled hole stays
    # Outputs without fills pass through untouched.
    assert infill.apply_filled_prompt(state, None) is None
    assert infill.apply_filled_prompt(state, {"x": 2}) == {"x": 2}
    only = infill.attach(None, [1], [8])
    assert infill.apply_filled_prompt(_State(None, [1, 126336]), only) is None


def test_a_prompt_text_that_does_not_spell_the_holes_is_left_alone():
    state = _State("token ids given", [1, 126336])
    infill.apply_filled_prompt(state, infill.attach(None, [1], [7]))
    assert state.prompt == "token ids given"
    assert state.prompt_token_ids == [1, 7]


def test_previews_are_for_maskgit_tasks_and_evenly_spaced():
    from dynin_vllm.diffusion.state import preview_steps

    params = parse_params({"task": "image_generation", "num_previews": 3})
    assert params.num_previews == 3
    assert DiffusionParams.from_wire(params.to_wire()) == params
    for bad in ({"num_previews": 2}, {"task": "speech_generation", "num_previews": 1}):
        with pytest.raises(DiffusionParamError, match="num_previews"):
            parse_params(bad)
    with pytest.raises(DiffusionParamError, match="num_previews"):
        parse_params({"task": "image_editing", "num_previews": -1})
    # Upstream's 20 T2I steps; the last step's prediction is the result.
    assert preview_steps(3, 20) == {5, 10, 15}
    assert preview_steps(2, 64) == {21, 42}
    assert preview_steps(3, 2) == {1}
    assert preview_steps(0, 20) == set()
