"""Per-task denoising defaults: upstream's values where nothing was set."""

from __future__ import annotations

from dynin_vllm.diffusion.params import DiffusionParams, parse_params


def test_image_requests_get_upstreams_image_defaults():
    params = parse_params({}).for_task("image", 64)
    assert (params.task, params.block_length, params.steps) == ("image", 64, 32)


def test_a_value_the_request_or_the_server_sets_wins():
    by_request = parse_params({"block_length": 8}).for_task("image", 64)
    assert (by_request.block_length, by_request.steps) == (8, 32)
    by_server = parse_params({}, {"steps": 16}).for_task("image", 64)
    assert (by_server.block_length, by_server.steps) == (64, 16)


def test_text_and_likelihood_requests_keep_theirs():
    text = parse_params({}).for_task("text", 64)
    assert (text.block_length, text.steps) == (32, None)
    scored = parse_params({"likelihood_tokens": 2}).for_task("image", 1)
    assert scored.block_length == 32


def test_the_explicit_names_survive_the_wire():
    params = parse_params({"block_length": 8}, {"threshold": 0.9})
    assert params.explicit == ("block_length", "threshold")
    assert DiffusionParams.from_wire(params.to_wire()) == params


def test_video_requests_get_one_block_at_one_token_per_step():
    params = parse_params({}).for_task("video", 32)
    assert (params.task, params.block_length, params.steps) == ("video", 32, 32)
