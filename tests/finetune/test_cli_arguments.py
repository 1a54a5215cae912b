"""The CLI's argument parsing: a bad ``--spec`` file is a usage error (exit 2) naming the problem, not a traceback."""

import pytest

from finetune.cli import build_parser


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read"), ("{not json", "is not JSON"), ("[1, 2]", "must hold a JSON object, not list")],
)
def test_a_bad_spec_file_is_a_usage_error_naming_it(tmp_path, capsys, content, message):
    spec = tmp_path / "spec.json"
    if content is not None:
        spec.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["train", str(tmp_path), "--spec", str(spec)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert message in error and str(spec) in error


def test_a_spec_file_is_read_into_the_arguments(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"backbone": "mobilenet", "warmup": {"epochs": 2}}')
    args = build_parser().parse_args(["train", str(tmp_path), "--spec", str(spec)])
    assert args.spec == {"backbone": "mobilenet", "warmup": {"epochs": 2}}
