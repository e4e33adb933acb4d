"""Command-line parsing: defaults from the paper's setup, one-line errors."""

import os
import subprocess
import sys

import pytest

from app import cli
from utils.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("resnet18", "resnet20", "resnet34", "wrn28_10", "vgg16", "preresnet164")


def parse(*argv):
    return cli.parse_config(list(argv), model_names=MODELS)


def test_defaults_follow_the_paper():
    config = parse()
    assert (config.dataset, config.model, config.epochs) == ("cifar10", "resnet18", 200)
    assert (config.batch_size, config.weight_decay, config.momentum) == (128, 1e-4, 0.9)
    assert config.ema_decays == (0.968, 0.984, 0.992, 0.996, 0.998)
    assert (config.ema_every_steps, config.schedule, config.warmup_epochs) == (16, "cosine", 5)
    assert parse("--dataset", "cifar10n").model == "resnet34"
    assert parse("--dataset", "cifar100n").model == "resnet34"
    assert parse("--dataset", "tiny-imagenet").epochs == 150
    assert parse("--model", "wrn28_10").weight_decay == 5e-4
    assert parse("--model", "vgg16").weight_decay == 5e-4
    assert parse("--schedule", "constant").warmup_epochs == 0
    assert parse("--swa", "--epochs", "200").swa_start_epoch == 151
    # The SWA branch: the rest of the budget, its starting point averaged too (SWA paper Algorithm 1).
    swa = parse("--swa", "--epochs", "30")
    assert (swa.swa_start_epoch, swa.swa_epochs, swa.swa_include_start) == (23, 8, True)
    longer = parse("--swa", "--epochs", "30", "--swa-epochs", "15", "--no-swa-include-start")
    assert (longer.swa_start_epoch, longer.swa_epochs, longer.swa_include_start) == (23, 15, False)
    assert (parse().swa_epochs, parse().swa_include_start) == (None, True)
    assert parse("--seeds", "0", "1", "2").seeds == (0, 1, 2)
    assert parse().precision == "float32"
    # Paper §4.1: warm-up counted in optimizer steps; Nesterov; 80/20 split.
    assert (parse().ema_warmup, parse().nesterov, parse().validation_fraction) == ("steps", True, 0.2)
    # SWA paper App. A: constant SWA lr 0.01 (CIFAR-10) / 0.05 (CIFAR-100) for ResNets.
    assert parse("--swa").swa_lr == 0.01 and parse("--swa", "--dataset", "cifar100").swa_lr == 0.05
    adda = parse("--no-nesterov", "--ema-warmup", "none", "--validation-fraction", "0.1")
    assert (adda.nesterov, adda.ema_warmup, adda.validation_fraction) == (False, "none", 0.1)
    # Adda et al.'s Table 1 reads the final epoch: every EMA kept at the last epoch, by both criteria.
    assert (parse().ema_select, parse().ema_select_epochs) == ("best", None)
    final = parse("--ema-select", "final", "--epochs", "30", "--ema-decays", "0.9", "0.99")
    assert final.ema_select == "final"
    assert final.ema_select_epochs == {"0.9": {"accuracy": 30, "loss": 30}, "0.99": {"accuracy": 30, "loss": 30}}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "cifar100-n"], "unknown dataset 'cifar100-n'; choose from cifar10, cifar100"),
        (["--model", "resnet50"], "unknown model 'resnet50'; choose from resnet18"),
        (["--schedule", "cyclic"], "unknown schedule 'cyclic'"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--lr", "-0.1"], "--lr must be > 0"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--ema-decays", "0.9", "1.2"], "--ema-decays 0.9 1.2: expected values in (0, 1)"),
        (["--ema-decays", "0.9", "0.9"], "--ema-decays 0.9 0.9: expected distinct values"),
        (["--label-noise", "worst"], "unknown label noise 'worst'"),
        (["--limit-train", "-5"], "expected an integer >= 1"),
        (["--lr", "abc"], "invalid float value: 'abc'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--precision", "float8"], "unknown precision 'float8'; choose from float32, mixed_float16, mixed_bfloat16"),
        (["--seeds", "1", "1"], "--seeds has duplicates: 1 1"),
        (["--ema-bn-mode", "swap"], "unknown --ema-bn-mode 'swap'; choose from eman, copy"),
        (["--ema-bn", "swap"], "unknown --ema-bn-mode 'swap'; choose from eman, copy"),  # the old name
        (["--ema-warmup", "epochs"], "unknown --ema-warmup mode 'epochs'; choose from steps, updates, none"),
        (["--validation-fraction", "1.5"], "--validation-fraction must be in (0, 1); got 1.5"),
        (["--stop-epochs-from", "runs/x"], "--stop-epochs-from is for the final --full-train run; add --full-train"),
        (["--full-train", "--stop-epochs-from", "/nonexistent/run"], "--stop-epochs-from: no finished run in /nonexistent/run"),
        (["--ema-select", "last"], "unknown --ema-select 'last'; choose from best, final"),
        (["--ema-evaluate", "never"], "unknown --ema-evaluate 'never'; choose from every-epoch, selected"),
        (["--ema-evaluate", "selected"], "--ema-evaluate selected evaluates each EMA only at epochs fixed in "
                                         "advance; add --stop-epochs-from RUN (a final run) or --ema-select final"),
        (["--ema-decays", "--ema-evaluate", "selected"], "--ema-evaluate acts on the EMAs, and --ema-decays gives none"),
        (["--full-train", "--stop-epochs-from", "runs/x", "--ema-select", "final"],
         "--ema-select final keeps the last epoch; drop --stop-epochs-from"),
        (["--swa", "--swa-start-epoch", "1"], "--swa-start-epoch must be >= 2"),
        (["--swa", "--swa-epochs", "0"], "argument --swa-epochs: expected an integer >= 1, got 0"),
        (["--swa", "--swa-epochs", "-3"], "argument --swa-epochs: expected an integer >= 1, got -3"),
        (["--swa", "--swa-epochs", "2.5"], "argument --swa-epochs: invalid positive_int value: '2.5'"),
        (["--swa-epochs", "10"], "--swa-epochs is for the SWA branch; add --swa"),
        (["--no-swa-include-start"], "--no-swa-include-start is for the SWA branch; add --swa"),
        (["--swa", "--swa-epochs", "3", "--swa-cycle-epochs", "4"],
         "--swa-epochs 3 is shorter than one --swa-cycle-epochs 4 cycle; use --swa-epochs 4 or more"),
        (["--swa", "--epochs", "4", "--swa-start-epoch", "4", "--swa-cycle-epochs", "2"],
         "the SWA branch (epochs 4-4) is shorter than one --swa-cycle-epochs 2 cycle; use --swa-epochs 2"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(argv, message):
    with pytest.raises(UsageError) as error:
        parse(*argv)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("module", ["cli", "evaluate", "consistency", "report", "transfer", "reproduce"])
def test_help_shows_every_flags_default_as_the_parser_holds_it(module):
    """Each option with a value default shows that very value in --help (switches and
    options without a default excepted); a default of 0 too (0 == False once hid it)."""
    import argparse
    import importlib

    parser = importlib.import_module(f"app.{module}").build_parser()
    formatter = parser._get_formatter()
    switches = (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction)
    for action in parser._actions:
        if not action.option_strings or isinstance(action, switches) or action.default is None:
            continue
        text = formatter._expand_help(action)
        if "(default" not in action.help:  # else the help states it in words (checked by hand)
            default = action.default
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
            assert text.endswith(f"(default: {default})") or f"(default: {shown})" in text, (action.dest, text)


def test_command_line_error_exit_status_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "app.train", "--dataset", "imagenet", "--out", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        "error: unknown dataset 'imagenet'; choose from cifar10, cifar100, cifar10n, "
        "cifar100n, tiny-imagenet"
    ]
    assert not (tmp_path / "run").exists()


def test_a_bad_swa_branch_length_is_exit_status_2(tmp_path, capsys):
    from app import train

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit:
        train.main(["--swa", "--swa-epochs", "0", "--out", str(out)])
    assert exit.value.code == 2 and not out.exists()
    assert capsys.readouterr().err == (
        "error: argument --swa-epochs: expected an integer >= 1, got 0 (see --help)\n")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--swa-start-epoch", "5"], "--swa-start-epoch is for the SWA branch; add --swa"),
        (["--swa-lr", "0.05"], "--swa-lr is for the SWA branch; add --swa"),
        (["--swa-cycle-epochs", "1"], "--swa-cycle-epochs is for the SWA branch; add --swa"),
        (["--swa-epochs", "5"], "--swa-epochs is for the SWA branch; add --swa"),
        (["--post-hoc-sigma-rels", "0.1"], "--post-hoc-sigma-rels is for the power-function EMAs; add --post-hoc-ema"),
        (["--post-hoc-snapshot-every-steps", "8"],
         "--post-hoc-snapshot-every-steps is for the power-function EMAs; add --post-hoc-ema"),
        (["--post-hoc-snapshot-dtype", "float16"],
         "--post-hoc-snapshot-dtype is for the power-function EMAs; add --post-hoc-ema"),
    ],
)
def test_a_flag_that_would_do_nothing_is_refused(argv, message):
    """Accepted, it would train without it and still be saved into config.json (where a resume
    later compares it: "differs in: swa_lr")."""
    with pytest.raises(UsageError) as error:
        parse(*argv)
    assert str(error.value) == message


@pytest.mark.parametrize("flag", [["--ema-warmup", "none"], ["--ema-select", "final"], ["--ema-bn-mode", "copy"],
                                  ["--bn-recompute", "epoch"], ["--ema-batch-scaling"], ["--ema-every-steps", "4"]])
def test_an_ema_flag_without_emas_is_refused(flag):
    name = flag[0]
    with pytest.raises(UsageError) as error:
        parse("--ema-decays", *flag)
    assert str(error.value) == f"{name} acts on the EMAs, and --ema-decays gives none; give decays or drop {name}"
    config = parse("--ema-decays", "0.9", *flag)  # with an EMA the same flag is taken
    assert str(getattr(config, name[2:].replace("-", "_"))) == (flag[1] if len(flag) == 2 else "True")


def test_the_same_flags_with_their_switch_are_used():
    swa = parse("--swa", "--epochs", "10", "--swa-start-epoch", "5", "--swa-lr", "0.05", "--swa-cycle-epochs", "2")
    assert (swa.swa_start_epoch, swa.swa_lr, swa.swa_cycle_epochs, swa.swa_epochs) == (5, 0.05, 2, 6)
    posthoc = parse("--post-hoc-ema", "--post-hoc-sigma-rels", "0.1", "--post-hoc-snapshot-dtype", "float16")
    assert (posthoc.post_hoc_sigma_rels, posthoc.post_hoc_snapshot_dtype) == ((0.1,), "float16")
    # Without their switch the fields keep the values config.json always had, so old runs resume.
    plain = parse()
    assert (plain.swa_lr, plain.swa_cycle_epochs, plain.post_hoc_snapshot_dtype) == (None, 1, "float32")
    assert (plain.ema_warmup, plain.ema_select, plain.ema_bn_mode, plain.bn_recompute) == (
        "steps", "best", "eman", "end")
    no_ema = parse("--ema-decays")
    assert (no_ema.ema_decays, no_ema.ema_warmup, no_ema.bn_recompute, no_ema.ema_batch_scaling) == (
        (), "steps", "end", False)
    assert plain.post_hoc_sigma_rels == (0.05, 0.1)


def test_an_older_swa_run_resumes_with_its_branch_length(tmp_path):
    """A config.json from before --swa-epochs: its branch ran to the end of the budget."""
    import json

    from training import run_dir

    config = parse("--swa", "--epochs", "30")
    saved = {key: value for key, value in config.to_dict().items()
             if key not in ("swa_epochs", "swa_include_start")}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    run_dir.check(str(tmp_path), config)  # the same run: resumes
    assert run_dir.load_config(str(tmp_path)).swa_epochs == 8
    with pytest.raises(UsageError, match=r"differs in: swa_epochs\)"):
        run_dir.check(str(tmp_path), parse("--swa", "--epochs", "30", "--swa-epochs", "15"))


def test_lr_from_reads_the_tuner_best_json(tmp_path):
    (tmp_path / "best.json").write_text('{"lr": 0.05, "hyperparameters": {"lr": 0.05, "weight_decay": 0.0005}}')
    config = parse("--lr-from", str(tmp_path))
    assert (config.lr, config.weight_decay) == (0.05, 0.0005)
    with pytest.raises(UsageError, match="give --lr or --lr-from, not both"):
        parse("--lr-from", str(tmp_path), "--lr", "0.1")
    with pytest.raises(UsageError, match="no readable best.json with an 'lr' in .*run python -m app.tune first"):
        parse("--lr-from", str(tmp_path / "missing"))


@pytest.mark.parametrize("given, expected", [((), 256), (("--batch-size", "128"), 128), (("--batch-size", "64"), 64)])
def test_a_batch_size_typed_wins_over_the_tuned_one(tmp_path, capsys, given, expected):
    """--lr-from fills only what the command line left out; what it filled is printed as such."""
    (tmp_path / "best.json").write_text('{"lr": 0.05, "hyperparameters": {"lr": 0.05, "batch_size": 256}}')
    config = parse("--lr-from", str(tmp_path), *given)
    assert (config.lr, config.batch_size) == (0.05, expected)
    taken = "--lr 0.05" + (", --batch-size 256" if not given else "")
    assert capsys.readouterr().out == f"--lr-from {tmp_path}: {taken} (the search's best)\n"


def test_stop_epochs_from_reads_the_validation_runs_selection(tmp_path):
    import json

    summary = {"evaluation_split": "validation", "sgd": {"best_val_accuracy": {"epoch": 6}}, "ema": {
        "0.9": {"best_val_accuracy": {"epoch": 7}, "lowest_val_loss": {"epoch": 5}},
        "0.99": {"best_val_accuracy": {"epoch": 9}, "lowest_val_loss": {"epoch": 8}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    base = ("--full-train", "--epochs", "10", "--stop-epochs-from", str(tmp_path))
    config = parse(*base, "--ema-decays", "0.9", "0.99")
    assert config.ema_select_epochs == {"0.9": {"accuracy": 7, "loss": 5}, "0.99": {"accuracy": 9, "loss": 8}}
    assert config.ema_evaluate == "every-epoch"
    assert parse(*base, "--ema-decays", "0.9", "0.99", "--ema-evaluate", "selected").ema_evaluate == "selected"
    assert parse("--ema-select", "final", "--ema-evaluate", "selected").ema_evaluate == "selected"
    with pytest.raises(UsageError, match="has no EMA of decay 0.999; use its decays: --ema-decays 0.9 0.99"):
        parse(*base, "--ema-decays", "0.999")
    with pytest.raises(UsageError, match="selected epoch 9 for decay 0.99, beyond --epochs 8"):
        parse("--full-train", "--epochs", "8", "--stop-epochs-from", str(tmp_path), "--ema-decays", "0.99")
    # Without EMAs (an SGD run at its own lr) the run gives SGD's early-stopping epoch only.
    config = parse(*base, "--ema-decays")
    assert (config.ema_decays, config.ema_select_epochs, config.stop_epochs_from) == ((), {}, str(tmp_path))
    summary.pop("ema")
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert parse(*base, "--ema-decays").stop_epochs_from == str(tmp_path)
    with pytest.raises(UsageError, match="selected epoch 6 for SGD's early stopping, beyond --epochs 5; use the "):
        parse("--full-train", "--epochs", "5", "--stop-epochs-from", str(tmp_path), "--ema-decays")
    with pytest.raises(UsageError, match="kept no EMA; give --ema-decays no values, or a validation run with EMAs"):
        parse(*base, "--ema-decays", "0.9")
    summary["evaluation_split"] = "test"
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UsageError, match="was evaluated on the test split"):
        parse(*base, "--ema-decays")


def test_warmup_warning_names_the_decays_never_released():
    from app.train_report import warmup_warning

    # 79 steps/epoch x 28 epochs = 2,212 steps: 0.996 leaves after step 2,241, 0.998 after 4,491.
    config = parse("--epochs", "28", "--ema-decays", "0.968", "0.996", "0.998")
    assert warmup_warning(config, 79) == (
        "note: EMA decays 0.996, 0.998 never leave the decay warm-up min(a, (t+1)/(t+10)) in this "
        "run (released after step 2,241, 4,491; the run has 2,212 steps); they hold one and the same average"
    )
    assert warmup_warning(parse("--epochs", "60", "--ema-decays", "0.968", "0.996"), 79) is None
    assert warmup_warning(parse("--ema-warmup", "none"), 1) is None
    # Counting EMA updates stretches the warm-up T-fold: 0.968 leaves after 273 x 16 steps.
    assert "0.968 never leaves" in warmup_warning(parse("--ema-warmup", "updates", "--epochs", "10",
                                                        "--ema-decays", "0.968"), 400)


def test_model_names_match_the_registry():
    import models
    from training.config import MODEL_NAMES

    assert tuple(models.model_names()) == MODEL_NAMES


def test_help_shows_each_default_once():
    from app import consistency, evaluate, reproduce, report, transfer

    for parser in (cli.build_parser(), evaluate.build_parser(), consistency.build_parser(),
                   report.build_parser(), transfer.build_parser(), reproduce.build_parser()):
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text
    text = cli.build_parser().format_help()
    assert text.count("(default: 0.1)") == 1 and "(default: 128, or the one --lr-from's search chose)" in text


def test_ema_batch_scaling_scales_by_the_batch_over_128():
    from training.config import ema_batch_scale

    assert ema_batch_scale(cli.parse_config(["--batch-size", "512", "--ema-batch-scaling"])) == 4.0
    assert ema_batch_scale(cli.parse_config(["--batch-size", "512"])) == 1.0
    assert ema_batch_scale(cli.parse_config(["--ema-batch-scaling"])) == 1.0


def test_model_parallel_sets_the_mesh_and_its_devices_on_jax(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    config = parse("--model-parallel", "2x4", "--batch-size", "64")
    assert (config.model_parallel, config.devices, config.batch_size) == ("2x4", 8, 64)
    assert parse().model_parallel is None


@pytest.mark.parametrize("backend, argv, message", [
    ("tensorflow", ("--model-parallel", "2x4"),
     "--model-parallel is JAX-only (keras.distribution, as in Keras); set KERAS_BACKEND=jax (was tensorflow)"),
    ("jax", ("--model-parallel", "2by4"), "--model-parallel '2by4': expected BATCHxMODEL, e.g. 2x4"),
    ("jax", ("--model-parallel", "0x4"), "--model-parallel '0x4': expected BATCHxMODEL, e.g. 2x4"),
    ("jax", ("--model-parallel", "2x4", "--devices", "4"),
     "--devices 4 with --model-parallel 2x4 (8 devices); leave out --devices"),
    ("jax", ("--model-parallel", "4x2", "--batch-size", "30"),
     "--batch-size 30 does not split across the 4 batch devices of --model-parallel 4x2; use a multiple of 4"),
])
def test_model_parallel_refusals_are_one_line(monkeypatch, backend, argv, message):
    monkeypatch.setenv("KERAS_BACKEND", backend)
    with pytest.raises(UsageError) as error:
        parse(*argv)
    assert str(error.value) == message
