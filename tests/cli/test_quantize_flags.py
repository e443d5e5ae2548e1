"""`phiquant quantize`'s options are the request fields' flags: one option per field, none besides
them but the shared output and evaluation options, parsed into the request the API builds."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from phiquant.cli import build_parser, common_options
from phiquant.commands.eval import add_evaluation_arguments
from phiquant.commands.flags import add_flags, flag_values
from phiquant.commands.report import add_report_arguments
from phiquant.quant.budget import parse_size
from phiquant.workflows.flags import flag_fields
from phiquant.workflows.quantize_request import FLAG_PARTS, QuantizeRequest


def _subparser(name: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = subparsers.choices[name]
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {action.dest for action in parser._actions}


def test_every_request_field_is_one_option_with_its_flags() -> None:
    options = {action.dest: action for action in _subparser("quantize")._actions}
    fields = [(field, flag) for part in FLAG_PARTS for field, flag in flag_fields(part)]
    assert fields, "the request parts declare no fields"
    for field, flag in fields:
        assert field.name in options, f"{field.name} has no --flag in phiquant quantize"
        action = options[field.name]
        names = tuple(action.option_strings) or (action.dest,)
        assert names == flag.names and action.help == flag.help, field.name


def test_quantize_has_no_option_that_is_not_a_field_or_a_shared_one() -> None:
    shared = argparse.ArgumentParser(add_help=False, parents=[common_options()])
    evaluation = shared.add_argument_group("evaluation")
    evaluation.add_argument("--eval", action="store_true")
    add_evaluation_arguments(evaluation, prefix="eval-")
    add_report_arguments(evaluation)
    fields = {field.name for part in FLAG_PARTS for field, _ in flag_fields(part)}
    extra = _dests(_subparser("quantize")) - fields - _dests(shared) - {"help", "run"}
    assert extra == set()


def test_a_field_without_a_flag_is_refused_when_the_parser_is_built() -> None:
    @dataclass(frozen=True)
    class Careless:
        threads: int | None = None

    with pytest.raises(TypeError, match=r"Careless\.threads declares no command-line flag"):
        add_flags(argparse.ArgumentParser(), [Careless])


def _request(*argv: str) -> QuantizeRequest:
    args = _subparser("quantize").parse_args(["model", *argv])
    return QuantizeRequest.from_options(**flag_values(args, FLAG_PARTS))


def test_the_command_line_makes_the_request_the_api_makes() -> None:
    argv = ["-t", "Q4_K_M", "-t", "Q8_0", "--tensor-type", "ffn_(up|down)=Q8_0", "--output-type", "Q6_K"]
    argv += ["--pure", "-o", "out", "--threads", "2", "--imatrix", "auto", "--split-max-size", "48G"]
    argv += ["--mmproj-type", "q8_0", "--allow-fallback", "--dry-run"]
    assert _request(*argv) == QuantizeRequest.from_options(
        source="model",
        types=["Q4_K_M", "Q8_0"],
        tensor_types=[("ffn_(up|down)", "Q8_0")],
        output_type="Q6_K",
        pure=True,
        output_dir="out",
        threads=2,
        imatrix="auto",
        split_max_size="48G",
        mmproj_type="q8_0",
        allow_fallback=True,
        dry_run=True,
    )
    assert _request("--max-size", "6MB") == QuantizeRequest.from_options(
        source="model", max_size=parse_size("6MB")
    )


def test_flags_left_out_are_the_fields_defaults() -> None:
    request = _request("-t", "Q8_0")
    defaults = {
        field.name: field.default
        for part in FLAG_PARTS
        for field in dataclasses.fields(part)
        if field.default is not dataclasses.MISSING and field.name != "overrides"
    }
    for part in (request.source, request.run, request.overrides):
        for field in dataclasses.fields(part):
            if field.name in defaults:
                assert getattr(part, field.name) == defaults[field.name], field.name


def test_flags_are_written_once_and_convert_shares_its_own_with_quantize() -> None:
    shared = ("--text-only", "--mmproj-type", "--allow-pickle", "--split-max-size", "--split-max-tensors")
    for name in shared:
        quantize = next(a for a in _subparser("quantize")._actions if name in a.option_strings)
        convert = next(a for a in _subparser("convert")._actions if name in a.option_strings)
        assert (quantize.help, quantize.default, quantize.choices) == (
            convert.help,
            convert.default,
            convert.choices,
        )
